//go:build windows

package process

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/windows"
)

// sysState holds the child's job object and a process handle. The child is
// created suspended and resumed only after it joined the job, so nothing it
// spawns can escape the job by racing the assignment.
type sysState struct {
	job  windows.Handle
	proc windows.Handle
}

// procNtResumeProcess resumes every thread of a suspended process; the
// Win32 API has no call for that given only a process handle.
var procNtResumeProcess = windows.NewLazySystemDLL("ntdll.dll").NewProc("NtResumeProcess")

func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		CreationFlags: windows.CREATE_NEW_PROCESS_GROUP | windows.CREATE_SUSPENDED,
	}
}

func (s *sysState) started(pid int) error {
	job, err := windows.CreateJobObject(nil, nil)
	if err != nil {
		return fmt.Errorf("create job object: %w", err)
	}
	s.job = job
	info := windows.JOBOBJECT_EXTENDED_LIMIT_INFORMATION{
		BasicLimitInformation: windows.JOBOBJECT_BASIC_LIMIT_INFORMATION{
			LimitFlags: windows.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
		},
	}
	if _, err := windows.SetInformationJobObject(job, windows.JobObjectExtendedLimitInformation,
		uintptr(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info))); err != nil {
		return fmt.Errorf("configure job object: %w", err)
	}
	const access = windows.PROCESS_SET_QUOTA | windows.PROCESS_TERMINATE |
		windows.PROCESS_SUSPEND_RESUME | windows.SYNCHRONIZE
	h, err := windows.OpenProcess(access, false, uint32(pid))
	if err != nil {
		return fmt.Errorf("open process %d: %w", pid, err)
	}
	s.proc = h
	if err := windows.AssignProcessToJobObject(job, h); err != nil {
		return fmt.Errorf("assign process %d to job object: %w", pid, err)
	}
	if err := procNtResumeProcess.Find(); err != nil {
		return fmt.Errorf("resume process %d: %w", pid, err)
	}
	if r, _, _ := procNtResumeProcess.Call(uintptr(h)); r != 0 {
		return fmt.Errorf("resume process %d: %w", pid, windows.NTStatus(r))
	}
	return nil
}

// release closes the job; KILL_ON_JOB_CLOSE ends whatever is left in it.
func (s *sysState) release() {
	if s.proc != 0 {
		_ = windows.CloseHandle(s.proc)
		s.proc = 0
	}
	if s.job != 0 {
		_ = windows.CloseHandle(s.job)
		s.job = 0
	}
}

// interrupt sends CTRL_BREAK to the child's console process group. It fails
// when the agent has no console; the kill after the grace still follows.
func (s *sysState) interrupt(pid int) error {
	return windows.GenerateConsoleCtrlEvent(windows.CTRL_BREAK_EVENT, uint32(pid))
}

func (s *sysState) kill(int) error {
	if s.job == 0 {
		return errors.New("no job object")
	}
	return windows.TerminateJobObject(s.job, 1)
}

// waitExited blocks until the child process has exited. The process handle
// keeps its id reserved, and the job stays valid until release.
func (s *sysState) waitExited(int) error {
	if s.proc == 0 {
		return errors.New("no process handle")
	}
	ev, err := windows.WaitForSingleObject(s.proc, windows.INFINITE)
	if err != nil {
		return fmt.Errorf("wait for process: %w", err)
	}
	if ev != windows.WAIT_OBJECT_0 {
		return fmt.Errorf("wait for process: unexpected result %#x", ev)
	}
	return nil
}
