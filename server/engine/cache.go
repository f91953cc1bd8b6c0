package engine

import (
	"sync"

	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// maxCached bounds the compiled job versions a Cache keeps.
const maxCached = 256

// Cache keeps compiled job versions by job id and version. A stored version
// never changes, so an entry never goes stale; the cache saves decoding and
// compiling a large job file again for every run. The API and the
// scheduler share one, and applying a job fills it, so the first run of a
// version just applied decodes nothing. A Cache is safe for concurrent use;
// the zero value is empty and ready.
type Cache struct {
	mu sync.Mutex
	m  map[[2]int64]*Graph
}

func cacheKey(j *store.Job) [2]int64 { return [2]int64{j.ID, int64(j.Version)} }

// Get returns the compiled graph of a stored job version (its spec is
// Graph.Spec), decoding and compiling it on a miss.
func (c *Cache) Get(j *store.Job) (*Graph, error) {
	key := cacheKey(j)
	c.mu.Lock()
	g, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return g, nil
	}
	spec, err := job.Decode(j.Spec)
	if err != nil {
		return nil, err
	}
	g, err = Compile(spec)
	if err != nil {
		return nil, err
	}
	c.Put(j, g)
	return g, nil
}

// Lookup returns the compiled graph of job version (jobID, version) if it
// is cached.
func (c *Cache) Lookup(jobID int64, version int) (*Graph, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, ok := c.m[[2]int64{jobID, int64(version)}]
	return g, ok
}

// Put records g as the compiled form of the stored job version j. g must
// compile the spec j holds (as [job.Parse] of the source that was stored,
// or [job.Decode] of j.Spec, give).
func (c *Cache) Put(j *store.Job, g *Graph) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCached {
		c.m = map[[2]int64]*Graph{}
	}
	c.m[cacheKey(j)] = g
}
