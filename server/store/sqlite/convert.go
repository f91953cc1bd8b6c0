package sqlite

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

// collect returns a function that scans every row of a query with scan and
// closes the rows; it reads as collect(scanX)(s.query(...)).
func collect[T any](scan func(scanner) (*T, error)) func(*sql.Rows, error) ([]*T, error) {
	return func(rows *sql.Rows, err error) ([]*T, error) {
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out []*T
		for rows.Next() {
			v, err := scan(rows)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, rows.Err()
	}
}

// Conversions between domain values and columns: times are unix
// milliseconds UTC with NULL for the zero time; maps are JSON objects.

// msOrNil returns t in unix milliseconds, or nil (NULL) for the zero time.
func msOrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

// msOr returns t in unix milliseconds, or def for the zero time.
func msOr(t time.Time, def int64) int64 {
	if t.IsZero() {
		return def
	}
	return t.UnixMilli()
}

// fromMS converts a stored millisecond time.
func fromMS(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// nullTime scans a nullable millisecond column.
type nullTime struct{ t *time.Time }

func (n nullTime) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*n.t = time.Time{}
	case int64:
		*n.t = fromMS(v)
	default:
		return fmt.Errorf("time column: unexpected %T", src)
	}
	return nil
}

// jsonMap scans a JSON object column into a map; "{}" scans as nil.
type jsonMap struct{ m *map[string]string }

func (j jsonMap) Scan(src any) error {
	var b []byte
	switch v := src.(type) {
	case nil:
		*j.m = nil
		return nil
	case string:
		if v == "{}" {
			*j.m = nil
			return nil
		}
		b = []byte(v)
	case []byte:
		b = v
	default:
		return fmt.Errorf("json column: unexpected %T", src)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("json column: %w", err)
	}
	if len(m) == 0 {
		m = nil
	}
	*j.m = m
	return nil
}

// encodeMap encodes m as a JSON object; nil and empty maps become "{}".
func encodeMap(m map[string]string) string {
	if len(m) == 0 {
		return "{}"
	}
	b, _ := json.Marshal(m) // a map[string]string always encodes
	return string(b)
}

// nullInt scans a nullable integer column into an *int.
type nullInt struct{ p **int }

func (n nullInt) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*n.p = nil
	case int64:
		i := int(v)
		*n.p = &i
	default:
		return fmt.Errorf("integer column: unexpected %T", src)
	}
	return nil
}

func intOrNil(p *int) any {
	if p == nil {
		return nil
	}
	return int64(*p)
}

// zeroInt scans a nullable integer column, NULL as 0.
type zeroInt struct{ p *int64 }

func (z zeroInt) Scan(src any) error {
	var n sql.NullInt64
	if err := n.Scan(src); err != nil {
		return err
	}
	*z.p = n.Int64
	return nil
}

// stateSet encodes states as "|a|b|" for the SQL test
// instr(@set, '|' || state || '|') > 0, which keeps a statement with a
// variable list of states preparable once.
func stateSet[S ~string](states []S) string {
	var b strings.Builder
	b.WriteByte('|')
	for _, s := range states {
		b.WriteString(string(s))
		b.WriteByte('|')
	}
	return b.String()
}
