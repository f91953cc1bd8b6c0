//go:build unix && !linux

package process

import "errors"

// waitExited is not available here: without waitid(WNOWAIT) the child's
// exit cannot be seen before it is reaped, after which its group id may be
// reused, so leftover group members are not killed.
func (*sysState) waitExited(int) error {
	return errors.New("waiting without reaping is not supported on this platform")
}
