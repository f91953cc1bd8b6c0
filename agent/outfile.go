package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// spareOutputPrefix names the empty output files kept for reuse.
const spareOutputPrefix = ".spare-"

// outputFiles hands out the fresh, empty $BATON_OUTPUT files of
// attempts. Creating a file costs an inode allocation, which on some file
// systems (ext4 without a journal) scans every inode freed in the last
// half minute: with thousands of short attempts that is most of the
// agent's work per attempt. So a released file is kept, emptied, for a
// later attempt when that is safe (see recyclable): no process may still
// hold it open, or it could write into the next attempt's outputs.
// Elsewhere, or when unsure, a released file is removed and the next one
// created. Its methods are safe for concurrent use.
type outputFiles struct {
	dir string
	max int // spares kept at most

	mu    sync.Mutex
	spare []string // paths of empty files ready for reuse
	seq   int
}

func newOutputFiles(dir string, max int) *outputFiles {
	return &outputFiles{dir: dir, max: max}
}

// create makes an empty file at path, from a spare when there is one.
func (o *outputFiles) create(path string) error {
	o.mu.Lock()
	var spare string
	if n := len(o.spare); n > 0 {
		spare = o.spare[n-1]
		o.spare = o.spare[:n-1]
	}
	o.mu.Unlock()
	if spare != "" {
		if err := os.Rename(spare, path); err == nil {
			return nil
		}
		_ = os.Remove(spare)
	}
	return os.WriteFile(path, nil, 0o600)
}

// release is called once the file at path has been read for good: it is
// kept as a spare when that is safe, removed otherwise. A missing file is
// not an error.
func (o *outputFiles) release(path string) error {
	o.mu.Lock()
	keep := len(o.spare) < o.max
	o.seq++
	spare := filepath.Join(o.dir, spareOutputPrefix+strconv.Itoa(o.seq))
	o.mu.Unlock()
	if keep {
		// Renamed first: a process that still knows the path creates a
		// new file there rather than opening this one after the check.
		err := os.Rename(path, spare)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err == nil {
			if recyclable(spare) {
				o.mu.Lock()
				o.spare = append(o.spare, spare)
				o.mu.Unlock()
				return nil
			}
			path = spare
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
