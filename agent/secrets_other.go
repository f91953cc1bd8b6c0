//go:build !windows

package agent

// secretVariants returns nothing on Unix: a child gets its environment as
// bytes and prints the value as the same bytes.
func secretVariants(string) []string { return nil }
