package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// The journal log is a file header followed by records, each framed as
//
//	magic   2 bytes  0xB7 0x4A
//	length  4 bytes  big-endian length of the body
//	crc     4 bytes  CRC-32C of the length bytes and the body
//	body    length bytes:
//	  kind     1 byte   what happened to the attempt (a recordState)
//	  id       8 bytes  attempt id
//	  start    8 bytes  when the attempt started, Unix nanoseconds (0: unknown)
//	  updated  8 bytes  when the record was written, Unix nanoseconds
//	  outcome  the rest: the TaskFinished in protobuf binary, for
//	           finished and rejected records only
//
// Each record is the new state of one attempt; replaying the log in order,
// the last record of an attempt wins and a forget record drops it. The
// magic lets a reader find the next record after a damaged one; the
// checksum tells a damaged or torn record from a whole one.
const (
	// logHeader starts every journal log file: its format and version.
	logHeader = "BATONJ\x00\x01"
	// recHeaderLen is the size of a record's frame before its body.
	recHeaderLen = 2 + 4 + 4
	// recFixedLen is the size of a record body without an outcome.
	recFixedLen = 1 + 8 + 8 + 8
	// maxRecordBody bounds a record body; an outcome is well below it
	// (tails of 8 KiB, outputs of at most 64 KiB).
	maxRecordBody = 4 << 20
	recMagic0     = 0xB7
	recMagic1     = 0x4A
)

// kindForget drops an attempt from the journal: its REJECTED outcome was
// acknowledged and nothing ran.
const kindForget = 'D'

// Record kinds on disk, by state.
var kindOf = map[recordState]byte{
	stateStarted:   'B',
	stateFinished:  'F',
	stateRejected:  'R',
	stateAcked:     'A',
	stateAbandoned: 'X',
}

var stateOf = map[byte]recordState{
	'B': stateStarted,
	'F': stateFinished,
	'R': stateRejected,
	'A': stateAcked,
	'X': stateAbandoned,
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errFrame says the bytes at an offset are not a whole record: the frame
// is cut short, damaged or not a frame at all.
var errFrame = errors.New("not a whole record")

// journalEntry is one decoded record.
type journalEntry struct {
	kind    byte
	id      int64
	start   time.Time
	updated time.Time
	outcome []byte // aliases the data it was decoded from
}

// appendRecord appends the framed record to buf.
func appendRecord(buf []byte, kind byte, id int64, start, updated time.Time, outcome []byte) []byte {
	n := recFixedLen + len(outcome)
	buf = append(buf, recMagic0, recMagic1, 0, 0, 0, 0, 0, 0, 0, 0)
	hdr := len(buf) - 8
	binary.BigEndian.PutUint32(buf[hdr:], uint32(n))
	buf = append(buf, kind)
	buf = binary.BigEndian.AppendUint64(buf, uint64(id))
	buf = binary.BigEndian.AppendUint64(buf, uint64(unixNano(start)))
	buf = binary.BigEndian.AppendUint64(buf, uint64(unixNano(updated)))
	buf = append(buf, outcome...)
	crc := crc32.Update(crc32.Checksum(buf[hdr:hdr+4], crcTable), crcTable, buf[hdr+8:])
	binary.BigEndian.PutUint32(buf[hdr+4:], crc)
	return buf
}

// recordLen is the framed size of a record with an outcome of n bytes.
func recordLen(n int) int { return recHeaderLen + recFixedLen + n }

// decodeRecord decodes the record at the start of data and returns its
// framed length. It returns errFrame when data does not start with a whole
// record whose checksum matches; any other error is for a whole record
// whose content makes no sense, which the returned length lets the caller
// skip.
func decodeRecord(data []byte) (journalEntry, int, error) {
	if len(data) < recHeaderLen || data[0] != recMagic0 || data[1] != recMagic1 {
		return journalEntry{}, 0, errFrame
	}
	n := binary.BigEndian.Uint32(data[2:6])
	if n < recFixedLen || n > maxRecordBody || int(n) > len(data)-recHeaderLen {
		return journalEntry{}, 0, errFrame
	}
	body := data[recHeaderLen : recHeaderLen+int(n)]
	crc := crc32.Update(crc32.Checksum(data[2:6], crcTable), crcTable, body)
	if crc != binary.BigEndian.Uint32(data[6:10]) {
		return journalEntry{}, 0, errFrame
	}
	total := recHeaderLen + int(n)
	r := journalEntry{
		kind:    body[0],
		id:      int64(binary.BigEndian.Uint64(body[1:])),
		start:   fromUnixNano(int64(binary.BigEndian.Uint64(body[9:]))),
		updated: fromUnixNano(int64(binary.BigEndian.Uint64(body[17:]))),
		outcome: body[recFixedLen:],
	}
	if r.id <= 0 {
		return journalEntry{}, total, fmt.Errorf("record names attempt %d", r.id)
	}
	state, known := stateOf[r.kind]
	switch {
	case r.kind == kindForget:
	case !known:
		return journalEntry{}, total, fmt.Errorf("attempt %d: unknown record kind %q", r.id, r.kind)
	case state == stateFinished || state == stateRejected:
		if len(r.outcome) == 0 {
			return journalEntry{}, total, fmt.Errorf("attempt %d: %s record without an outcome", r.id, state)
		}
	default:
		if len(r.outcome) != 0 {
			return journalEntry{}, total, fmt.Errorf("attempt %d: %s record with an outcome", r.id, state)
		}
	}
	return r, total, nil
}

// logDamage is a stretch of the log that held no whole record.
type logDamage struct {
	off, len int
	tail     bool // the stretch runs to the end of the log: a torn last write
}

// scanLog calls fn for every whole record in data (the log after its
// header), in order, with the record's offset in data. A record that fn
// or decodeRecord rejects is reported through bad and skipped; bytes that
// hold no whole record are skipped up to the next whole record and
// returned as damage.
func scanLog(data []byte, fn func(r journalEntry, off int) error, bad func(off int, err error)) []logDamage {
	var damage []logDamage
	off := 0
	for off < len(data) {
		r, n, err := decodeRecord(data[off:])
		if err == nil {
			if ferr := fn(r, off); ferr != nil {
				bad(off, ferr)
			}
			off += n
			continue
		}
		if !errors.Is(err, errFrame) {
			bad(off, err)
			off += n
			continue
		}
		next := resync(data, off+1)
		if next < 0 {
			damage = append(damage, logDamage{off: off, len: len(data) - off, tail: true})
			break
		}
		damage = append(damage, logDamage{off: off, len: next - off})
		off = next
	}
	return damage
}

// resync returns the offset of the first whole record at or after from,
// or -1.
func resync(data []byte, from int) int {
	magic := []byte{recMagic0, recMagic1}
	for from < len(data) {
		i := bytes.Index(data[from:], magic)
		if i < 0 {
			return -1
		}
		at := from + i
		if _, _, err := decodeRecord(data[at:]); !errors.Is(err, errFrame) {
			return at
		}
		from = at + 1
	}
	return -1
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
