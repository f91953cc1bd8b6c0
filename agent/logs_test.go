package agent

import (
	"bytes"
	"sync"
	"testing"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// chunkSink collects emitted chunks.
type chunkSink struct {
	mu     sync.Mutex
	chunks []*batonv1.LogChunk
}

func (s *chunkSink) emit(c *batonv1.LogChunk) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.chunks = append(s.chunks, c)
}

// check verifies chunks are contiguous from offset 0, at most
// logChunkSize each, and returns their concatenated data.
func (s *chunkSink) check(t *testing.T) []byte {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []byte
	for _, c := range s.chunks {
		if c.GetOffset() != int64(len(all)) {
			t.Fatalf("chunk at offset %d, want %d", c.GetOffset(), len(all))
		}
		if n := len(c.GetData()); n == 0 || n > logChunkSize {
			t.Fatalf("chunk of %d bytes, want 1..%d", n, logChunkSize)
		}
		all = append(all, c.GetData()...)
	}
	return all
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = floodPattern(int64(i))
	}
	return b
}

func TestLogStream(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		writes     []int // sizes of successive writes
		openAfter  int   // writes before setOpen
		wantChunks int   // emitted before the final flush
	}{
		{name: "small writes wait for a flush", writes: []int{10, 20, 30}, wantChunks: 0},
		{name: "a full chunk is emitted at once", writes: []int{logChunkSize + 5}, wantChunks: 1},
		{name: "buffered until open", writes: []int{3 * logChunkSize, 100}, openAfter: 1, wantChunks: 3},
		{name: "cap", writes: []int{logStreamCap - 10, 100, logChunkSize}, wantChunks: logStreamCap / logChunkSize},
		{name: "many odd writes", writes: []int{7001, 7001, 7001, 7001, 7001, 7001}, wantChunks: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := &chunkSink{}
			l := &logStream{attemptID: 1, stream: streamStdout, emit: sink.emit}
			total := 0
			for _, n := range tc.writes {
				total += n
			}
			data := pattern(total)
			off := 0
			if tc.openAfter == 0 {
				l.setOpen()
			}
			for i, n := range tc.writes {
				if i == tc.openAfter && i > 0 {
					l.setOpen()
				}
				if got, err := l.Write(data[off : off+n]); got != n || err != nil {
					t.Fatalf("Write = %d, %v, want %d, nil", got, err, n)
				}
				off += n
			}
			sink.mu.Lock()
			emitted := len(sink.chunks)
			sink.mu.Unlock()
			if emitted != tc.wantChunks {
				t.Errorf("emitted %d chunks before the flush, want %d", emitted, tc.wantChunks)
			}
			l.flush()
			streamed := sink.check(t)
			wantStreamed := data[:min(total, logStreamCap)]
			if !bytes.Equal(streamed, wantStreamed) {
				t.Errorf("streamed %d bytes, want the first %d bytes written", len(streamed), len(wantStreamed))
			}
			wantTail := data[max(0, total-logTailSize):]
			if got := l.lastBytes(); !bytes.Equal(got, wantTail) {
				t.Errorf("tail has %d bytes, want the last %d written", len(got), len(wantTail))
			}
		})
	}
}

func TestLogStreamTailAcrossSmallWrites(t *testing.T) {
	t.Parallel()
	l := &logStream{emit: func(*batonv1.LogChunk) {}}
	data := pattern(5 * logTailSize)
	for i := 0; i < len(data); i += 100 {
		_, _ = l.Write(data[i:min(i+100, len(data))])
	}
	if got := l.lastBytes(); !bytes.Equal(got, data[len(data)-logTailSize:]) {
		t.Errorf("tail is not the last %d bytes", logTailSize)
	}
	if cap(l.tail) > 3*logTailSize {
		t.Errorf("tail buffer grew to %d bytes, want it bounded near %d", cap(l.tail), 2*logTailSize)
	}
}
