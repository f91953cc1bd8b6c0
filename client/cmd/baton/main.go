// Command baton is the command line client of the Baton control plane.
//
// Run "baton --help" for its commands; see package
// github.com/batonhq/baton/client/cmd/baton/cli for the code.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/batonhq/baton/client/cmd/baton/cli"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	// The first interrupt cancels what baton is doing (a watch stops
	// following the run, which keeps going on the server); a second one
	// kills baton the default way.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	env := &cli.Env{
		Stdin:     os.Stdin,
		Stdout:    os.Stdout,
		Stderr:    os.Stderr,
		LookupEnv: os.LookupEnv,
		Version:   version,
	}
	code := env.Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
