package agent

import (
	"sync"
	"time"

	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

const (
	// logChunkSize is the most data one LogChunk carries; a stream is
	// flushed as soon as this much is pending.
	logChunkSize = 32 << 10
	// logFlushInterval is how often pending output is flushed anyway.
	logFlushInterval = 200 * time.Millisecond
	// logStreamCap is how much of each stream is streamed to the control
	// plane; later output is only counted (and kept in the tail). The
	// runner forwards as much.
	logStreamCap = runner.ForwardCap
	// logTailSize is how much of the end of each stream TaskFinished
	// carries; the runner keeps as much.
	logTailSize = runner.TailSize
)

// logStream turns one of a child's output streams into LogChunks. Memory
// stays bounded whatever the child writes: at most a chunk's worth of
// pending data (all of the first logStreamCap bytes while the stream is
// not yet open) and a tail of twice logTailSize.
type logStream struct {
	attemptID int64
	stream    batonv1.LogStream
	// emit delivers a chunk; it may block (backpressure on the child) and
	// may drop the chunk when no session is connected.
	emit func(*batonv1.LogChunk)
	// onPending, if set, is called (with mu held) when the open stream
	// holds data not yet emitted.
	onPending func()

	mu      sync.Mutex
	open    bool   // chunks may be emitted (after TaskStarted)
	pending []byte // streamable bytes not yet emitted, starting at sent
	sent    int64  // offset of pending[0]
	total   int64  // bytes written so far
	tail    []byte
}

// Write records p. It never fails.
func (l *logStream) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writeLocked(p)
	return len(p), nil
}

// writeAt records p, which starts at offset off of the stream. A gap
// (output the agent did not see) is skipped; bytes already recorded are
// not recorded again.
func (l *logStream) writeAt(off int64, p []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case off > l.total:
		l.skipLocked(off)
	case off < l.total:
		seen := l.total - off
		if seen >= int64(len(p)) {
			return
		}
		p = p[seen:]
	}
	l.writeLocked(p)
}

// catchUp makes the stream end at total with the given tail: the runner
// saw all of the stream, the agent may have missed parts of it while no
// agent was attached. A total below what the agent saw (a runner that does
// not count, as on Windows) changes nothing.
func (l *logStream) catchUp(tail []byte, total int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if total < l.total || total == 0 {
		return
	}
	if total > l.total {
		l.skipLocked(total)
	}
	l.tail = append(l.tail[:0], tail...)
}

// skipLocked moves the end of the stream to off > total. What is pending
// is emitted first if the stream is open; otherwise it is dropped, as the
// chunks after the gap could not follow it.
func (l *logStream) skipLocked(off int64) {
	if l.open {
		l.flushLocked()
	}
	l.pending = l.pending[:0]
	l.total = off
	l.sent = off
}

func (l *logStream) writeLocked(p []byte) {
	l.appendTail(p)
	if l.total < logStreamCap {
		keep := min(int64(len(p)), logStreamCap-l.total)
		l.pending = append(l.pending, p[:keep]...)
	}
	l.total += int64(len(p))
	if l.open {
		for len(l.pending) >= logChunkSize {
			l.emitLocked(logChunkSize)
		}
		if len(l.pending) > 0 && l.onPending != nil {
			l.onPending()
		}
	}
}

// appendTail keeps at least the last logTailSize bytes, compacting only
// when the buffer reaches twice that, so a write costs O(len(p)) amortised.
func (l *logStream) appendTail(p []byte) {
	if len(p) >= logTailSize {
		l.tail = append(l.tail[:0], p[len(p)-logTailSize:]...)
		return
	}
	if len(l.tail)+len(p) > 2*logTailSize {
		l.tail = append(l.tail[:0], l.tail[len(l.tail)-(logTailSize-len(p)):]...)
	}
	l.tail = append(l.tail, p...)
}

// setOpen allows chunks to be emitted and emits what is pending.
func (l *logStream) setOpen() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open = true
	l.flushLocked()
}

// flush emits everything pending, in chunks of at most logChunkSize.
func (l *logStream) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open {
		l.flushLocked()
	}
}

func (l *logStream) flushLocked() {
	for len(l.pending) > 0 {
		l.emitLocked(min(len(l.pending), logChunkSize))
	}
}

// emitLocked emits the first n pending bytes. The chunk gets its own copy:
// the sender marshals it later, while pending is reused.
func (l *logStream) emitLocked(n int) {
	chunk := &batonv1.LogChunk{
		AttemptId: l.attemptID,
		Stream:    l.stream,
		Offset:    l.sent,
		Data:      append([]byte(nil), l.pending[:n]...),
	}
	l.pending = append(l.pending[:0], l.pending[n:]...)
	l.sent += int64(n)
	l.emit(chunk)
}

// lastBytes returns a copy of the stream's last logTailSize bytes.
func (l *logStream) lastBytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tail
	if len(t) > logTailSize {
		t = t[len(t)-logTailSize:]
	}
	return append([]byte(nil), t...)
}

// attemptLogs streams an attempt's stdout and stderr.
type attemptLogs struct {
	stdout *logStream
	stderr *logStream

	// mu guards the flush timer. It is taken with a stream's lock held,
	// never the other way round.
	mu       sync.Mutex
	timer    *time.Timer // armed while output waits to be flushed
	finished bool
}

func newAttemptLogs(attemptID int64, emit func(*batonv1.LogChunk)) *attemptLogs {
	l := &attemptLogs{
		stdout: &logStream{attemptID: attemptID, stream: batonv1.LogStream_LOG_STREAM_STDOUT, emit: emit},
		stderr: &logStream{attemptID: attemptID, stream: batonv1.LogStream_LOG_STREAM_STDERR, emit: emit},
	}
	l.stdout.onPending = l.arm
	l.stderr.onPending = l.arm
	return l
}

// Output implements runner.Sink.
func (l *attemptLogs) Output(stream runner.Stream, offset int64, data []byte) {
	switch stream {
	case runner.Stdout:
		l.stdout.writeAt(offset, data)
	case runner.Stderr:
		l.stderr.writeAt(offset, data)
	}
}

// start opens both streams: from now on pending output is flushed within
// logFlushInterval, until finish. A child that writes nothing costs no
// timer.
func (l *attemptLogs) start() {
	l.stdout.setOpen()
	l.stderr.setOpen()
}

// arm makes sure a flush is due within logFlushInterval.
func (l *attemptLogs) arm() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil || l.finished {
		return
	}
	l.timer = time.AfterFunc(logFlushInterval, l.flushDue)
}

// flushDue flushes both streams when the timer fires.
func (l *attemptLogs) flushDue() {
	l.mu.Lock()
	l.timer = nil
	l.mu.Unlock()
	l.stdout.flush()
	l.stderr.flush()
}

// finish stops the periodic flush and flushes what is left. Call it after
// the child's output has been read to the end.
func (l *attemptLogs) finish() {
	l.mu.Lock()
	l.finished = true
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	l.mu.Unlock()
	l.stdout.setOpen()
	l.stderr.setOpen()
}
