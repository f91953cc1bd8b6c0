package sqlserver_test

import (
	"context"
	"log"

	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/sqlserver"
)

// Open a store as the DML-only service login and use it. The schema was
// migrated beforehand by the owner login (`batond migrate`); Migrate here
// finds it current and changes nothing.
func ExampleOpen() {
	ctx := context.Background()
	s, err := sqlserver.Open(ctx, sqlserver.Config{
		DSN: "sqlserver://baton_svc:secret@sql01.corp:1433?database=baton&app+name=batond&encrypt=strict",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			log.Print(err)
		}
	}()
	if err := s.Migrate(ctx); err != nil {
		log.Print(err)
		return
	}
	jobs, err := s.JobList(ctx, &store.JobListParams{})
	if err != nil {
		log.Print(err)
		return
	}
	log.Printf("%d jobs", len(jobs))
}
