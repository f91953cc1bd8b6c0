package agent

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestOutputFilesAreRecycledWhenSafe(t *testing.T) {
	t.Parallel()
	setupFiles := func(t *testing.T) (*outputFiles, string) {
		dir := t.TempDir()
		return newOutputFiles(dir, 4), dir
	}
	spares := func(o *outputFiles) int {
		o.mu.Lock()
		defer o.mu.Unlock()
		return len(o.spare)
	}
	mustCreate := func(t *testing.T, o *outputFiles, path string) os.FileInfo {
		t.Helper()
		if err := o.create(path); err != nil {
			t.Fatalf("create(%s): %v", path, err)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != 0 || fi.Mode() != 0o600 {
			t.Errorf("created %s: size %d mode %v, want an empty 0600 file", path, fi.Size(), fi.Mode())
		}
		return fi
	}

	t.Run("written and chmodded, then reused empty", func(t *testing.T) {
		t.Parallel()
		o, dir := setupFiles(t)
		first := mustCreate(t, o, filepath.Join(dir, "1"))
		if err := os.WriteFile(filepath.Join(dir, "1"), []byte("RowCount=3\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, "1"), 0o444); err != nil {
			t.Fatal(err)
		}
		if err := o.release(filepath.Join(dir, "1")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(dir, "1")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("released path still exists: %v", err)
		}
		if n := spares(o); n != 1 {
			t.Fatalf("%d spares after a release, want 1", n)
		}
		second := mustCreate(t, o, filepath.Join(dir, "2"))
		if !os.SameFile(first, second) {
			t.Error("the second file is a new one, want the recycled first one")
		}
	})
	t.Run("held open elsewhere: removed, never reused", func(t *testing.T) {
		t.Parallel()
		o, dir := setupFiles(t)
		path := filepath.Join(dir, "1")
		first := mustCreate(t, o, path)
		held, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = held.Close() }() // never written
		if err := o.release(path); err != nil {
			t.Fatal(err)
		}
		if n := spares(o); n != 0 {
			t.Errorf("%d spares after releasing a file held open, want 0", n)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 0 {
			t.Errorf("dir holds %d entries, want none: the held file must be removed", len(entries))
		}
		if second := mustCreate(t, o, filepath.Join(dir, "2")); os.SameFile(first, second) {
			t.Error("a file another process holds open was reused")
		}
	})
	t.Run("a symlink is not followed", func(t *testing.T) {
		t.Parallel()
		o, dir := setupFiles(t)
		target := filepath.Join(t.TempDir(), "precious")
		if err := os.WriteFile(target, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "1")
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		if err := o.release(path); err != nil {
			t.Fatal(err)
		}
		if data, err := os.ReadFile(target); err != nil || string(data) != "keep me" {
			t.Errorf("symlink target = %q, %v; want it untouched", data, err)
		}
		if n := spares(o); n != 0 {
			t.Errorf("%d spares after releasing a symlink, want 0", n)
		}
	})
	t.Run("a file with another link is not reused", func(t *testing.T) {
		t.Parallel()
		o, dir := setupFiles(t)
		path := filepath.Join(dir, "1")
		mustCreate(t, o, path)
		other := filepath.Join(t.TempDir(), "link")
		if err := os.Link(path, other); err != nil {
			t.Fatal(err)
		}
		if err := o.release(path); err != nil {
			t.Fatal(err)
		}
		if n := spares(o); n != 0 {
			t.Errorf("%d spares after releasing a file with another link, want 0", n)
		}
	})
	t.Run("missing files and the bound", func(t *testing.T) {
		t.Parallel()
		o, dir := setupFiles(t)
		if err := o.release(filepath.Join(dir, "none")); err != nil {
			t.Errorf("release of a missing file = %v, want nil", err)
		}
		for _, name := range []string{"1", "2", "3", "4", "5", "6"} {
			mustCreate(t, o, filepath.Join(dir, name))
		}
		for _, name := range []string{"1", "2", "3", "4", "5", "6"} {
			if err := o.release(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		if n := spares(o); n != 4 {
			t.Errorf("%d spares, want the bound of 4", n)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 4 {
			t.Errorf("dir holds %d entries, want the 4 spares", len(entries))
		}
	})
}
