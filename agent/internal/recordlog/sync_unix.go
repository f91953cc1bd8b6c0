//go:build unix

package recordlog

import "os"

// syncDir flushes a directory's entries (a rename) to stable storage.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	_ = d.Close() // read only: Sync's result is the one that counts
	return err
}
