package cli

import "github.com/spf13/cobra"

// RootCommandForDocs returns the command tree, for tests that walk it.
func RootCommandForDocs() *cobra.Command {
	a := &app{env: &Env{}}
	return a.rootCommand()
}
