// Package recordlog keeps an append-only log of records in one file, for
// state that changes a few times per child: the agent's journal and the
// runner's records of its children.
//
// Each record is framed as
//
//	magic   2 bytes  0xB7 0x4A
//	length  4 bytes  big-endian length of the body
//	crc     4 bytes  CRC-32C of the length bytes and the body
//	body    length bytes, opaque to this package
//
// after a file header that names the format. The checksum tells a whole
// record from one a crash cut short or the disk damaged; the magic lets a
// reader find the next whole record after a damaged one. Each record
// belongs to a key (an attempt id); a later record of a key supersedes the
// earlier ones, so the log is compacted by rewriting the last record of
// every live key to a new file that atomically replaces the log.
//
// A [Log] appends with group commit: records queued together go out in
// one write, made by whichever waiting caller finds the log idle, or by a
// short-lived background goroutine for records nobody waits for.
package recordlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
)

const (
	// FrameLen is the size of a record's frame before its body.
	FrameLen = 2 + 4 + 4
	// MaxBody bounds a record body; longer ones are refused.
	MaxBody = 4 << 20
	magic0  = 0xB7
	magic1  = 0x4A
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrTooLarge is returned for a record body longer than MaxBody.
var ErrTooLarge = errors.New("record is too large for the log")

// AppendRecord appends body, framed, to buf. The body must be at most
// MaxBody bytes.
func AppendRecord(buf, body []byte) []byte {
	buf = append(buf, magic0, magic1, 0, 0, 0, 0, 0, 0, 0, 0)
	hdr := len(buf) - 8
	binary.BigEndian.PutUint32(buf[hdr:], uint32(len(body)))
	buf = append(buf, body...)
	crc := crc32.Update(crc32.Checksum(buf[hdr:hdr+4], crcTable), crcTable, body)
	binary.BigEndian.PutUint32(buf[hdr+4:], crc)
	return buf
}

// frame returns the body of the whole record at the start of data and the
// record's framed length; ok is false when data does not start with one.
func frame(data []byte) (body []byte, n int, ok bool) {
	if len(data) < FrameLen || data[0] != magic0 || data[1] != magic1 {
		return nil, 0, false
	}
	size := binary.BigEndian.Uint32(data[2:6])
	if size > MaxBody || int(size) > len(data)-FrameLen {
		return nil, 0, false
	}
	body = data[FrameLen : FrameLen+int(size)]
	crc := crc32.Update(crc32.Checksum(data[2:6], crcTable), crcTable, body)
	if crc != binary.BigEndian.Uint32(data[6:10]) {
		return nil, 0, false
	}
	return body, FrameLen + int(size), true
}

// Damage is a stretch of a log that holds no whole record.
type Damage struct {
	// Off and Len locate the stretch in the data given to Scan.
	Off, Len int
	// Tail says the stretch runs to the end of the data: typically a
	// write a crash cut short.
	Tail bool
}

// Scan calls fn for the body of every whole record in data (records after
// the file header), in order, with the record's offset in data. The body
// aliases data. Bytes that hold no whole record are skipped up to the next
// whole record and returned as damage.
func Scan(data []byte, fn func(body []byte, off int)) []Damage {
	var damage []Damage
	off := 0
	for off < len(data) {
		body, n, ok := frame(data[off:])
		if ok {
			fn(body, off)
			off += n
			continue
		}
		next := resync(data, off+1)
		if next < 0 {
			damage = append(damage, Damage{Off: off, Len: len(data) - off, Tail: true})
			break
		}
		damage = append(damage, Damage{Off: off, Len: next - off})
		off = next
	}
	return damage
}

// resync returns the offset of the first whole record at or after from,
// or -1.
func resync(data []byte, from int) int {
	magic := []byte{magic0, magic1}
	for from < len(data) {
		i := bytes.Index(data[from:], magic)
		if i < 0 {
			return -1
		}
		at := from + i
		if _, _, ok := frame(data[at:]); ok {
			return at
		}
		from = at + 1
	}
	return -1
}
