package agent

import (
	"golang.org/x/sys/unix"
)

// recyclable empties the file at path for reuse and reports whether it may
// be reused: a regular file of this user with no other link, which no
// process holds open. That last check is a write lease, which the kernel
// grants only when no other descriptor of the file is open anywhere; the
// file was renamed to a private name before, so nothing can open it
// afterwards.
func recyclable(path string) bool {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer func() { _ = unix.Close(fd) }() // nothing was written through fd
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 ||
		int(st.Uid) != unix.Geteuid() {
		return false
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		return false
	}
	defer func() { _, _ = unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK) }()
	if st.Size != 0 && unix.Ftruncate(fd, 0) != nil {
		return false
	}
	if st.Mode&0o7777 != 0o600 && unix.Fchmod(fd, 0o600) != nil {
		return false
	}
	return true
}
