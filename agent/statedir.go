package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// heldDirs are the state dirs this process has locked. The OS lock alone
// does not see a second agent in the same process (POSIX record locks
// belong to the process), so New checks here first.
var (
	heldMu   sync.Mutex
	heldDirs = make(map[string]bool)
)

// lockStateDir makes dir this agent's: it fails with errStateDirInUse when
// another agent, in this process or another, holds it. The returned func
// releases it.
func lockStateDir(dir string) (release func(), err error) {
	key, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("resolve state dir: %w", err)
	}
	key, err = filepath.Abs(key)
	if err != nil {
		return nil, fmt.Errorf("resolve state dir: %w", err)
	}
	heldMu.Lock()
	defer heldMu.Unlock()
	if heldDirs[key] {
		return nil, errStateDirInUse
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state dir lock: %w", err)
	}
	if err := lockFile(f); err != nil {
		_ = f.Close() // the lock error is the one to report
		return nil, err
	}
	heldDirs[key] = true
	var once sync.Once
	return func() {
		once.Do(func() {
			heldMu.Lock()
			defer heldMu.Unlock()
			// Close before forgetting: closing any descriptor of the file
			// drops this process's POSIX lock, also one taken anew. The
			// file is never written: a Close error has nothing to lose.
			_ = f.Close()
			delete(heldDirs, key)
		})
	}, nil
}
