package server

import (
	"sync"

	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// maxCachedSpecs bounds the decoded job versions kept in memory.
const maxCachedSpecs = 256

// specCache keeps decoded and compiled job versions. A stored version never
// changes, so an entry never goes stale; the cache only saves decoding a
// large job file again for every StartRun or listing.
type specCache struct {
	mu sync.Mutex
	m  map[[2]int64]*compiled
}

type compiled struct {
	spec *job.Spec
	g    *engine.Graph
}

// get returns the decoded spec and graph of a stored job version.
func (c *specCache) get(j *store.Job) (*job.Spec, *engine.Graph, error) {
	key := [2]int64{j.ID, int64(j.Version)}
	c.mu.Lock()
	if e, ok := c.m[key]; ok {
		c.mu.Unlock()
		return e.spec, e.g, nil
	}
	c.mu.Unlock()
	spec, err := job.Decode(j.Spec)
	if err != nil {
		return nil, nil, err
	}
	g, err := engine.Compile(spec)
	if err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedSpecs {
		c.m = map[[2]int64]*compiled{}
	}
	c.m[key] = &compiled{spec: spec, g: g}
	return spec, g, nil
}
