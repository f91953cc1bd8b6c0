package sqlserver

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf16"

	mssql "github.com/microsoft/go-mssqldb"
)

// Conversions between domain values and columns. Times are DATETIME2(3)
// UTC with NULL for the zero time; maps are JSON objects in NVARCHAR(MAX).

// maxKey is the length, in characters, of the NVARCHAR(400) columns that
// hold names, tasks, agents, request ids and lease holders.
const maxKey = 400

// timeOrNil binds t for a DATETIME2(3) column: nil (NULL) for the zero
// time, else t in UTC truncated to the millisecond. Truncating here, not
// letting the server round, stores what the SQLite backend stores. A
// time.Time goes out as datetimeoffset, whose conversion to DATETIME2
// keeps the wall clock and drops the offset, hence UTC.
func timeOrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Truncate(time.Millisecond)
}

// nullTime scans a nullable DATETIME2 column; NULL is the zero time.
type nullTime struct{ t *time.Time }

func (n nullTime) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*n.t = time.Time{}
	case time.Time:
		*n.t = v.UTC()
	default:
		return fmt.Errorf("time column: unexpected %T", src)
	}
	return nil
}

// utcTime scans a NOT NULL DATETIME2 column.
type utcTime struct{ t *time.Time }

func (u utcTime) Scan(src any) error {
	v, ok := src.(time.Time)
	if !ok {
		return fmt.Errorf("time column: unexpected %T", src)
	}
	*u.t = v.UTC()
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

// encodeMap encodes m as a JSON object bound as NVARCHAR(MAX); nil and
// empty maps become "{}".
func encodeMap(m map[string]string) mssql.NVarCharMax {
	if len(m) == 0 {
		return "{}"
	}
	b, _ := json.Marshal(m) // a map[string]string always encodes
	return mssql.NVarCharMax(b)
}

// nullInt scans a nullable integer column into an *int.
type nullInt struct{ p **int }

func (n nullInt) Scan(src any) error {
	var v sql.NullInt64
	if err := v.Scan(src); err != nil {
		return err
	}
	if !v.Valid {
		*n.p = nil
		return nil
	}
	i := int(v.Int64)
	*n.p = &i
	return nil
}

// intOrNil binds a nullable INT column.
func intOrNil(p *int) any {
	if p == nil {
		return sql.NullInt32{}
	}
	return int32(*p)
}

// zeroInt scans a nullable BIGINT column, NULL as 0.
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
// CHARINDEX(N'|' + state + N'|', @from) > 0, which keeps a statement with a
// variable list of states one registered, cached plan. It is used only on
// rows already found by key; scans by state use literal predicates so
// filtered indexes match.
func stateSet[S ~string](states []S) string {
	var b strings.Builder
	b.WriteByte('|')
	for _, s := range states {
		b.WriteString(string(s))
		b.WriteByte('|')
	}
	return b.String()
}

// checkKey returns an error naming field when v is empty (unless optional)
// or longer than the NVARCHAR(400) column that stores it, which counts
// UTF-16 code units.
func checkKey(field, v string, optional bool) error {
	if v == "" {
		if optional {
			return nil
		}
		return fmt.Errorf("%s is empty", field)
	}
	n := 0
	for _, r := range v {
		n += utf16.RuneLen(r)
	}
	if n > maxKey {
		return fmt.Errorf("%s is %d characters long; the limit is %d", field, n, maxKey)
	}
	return nil
}

// ms converts a duration to whole milliseconds for DATEADD, which takes an
// INT: durations are capped at about 24 days.
func ms(d time.Duration) int32 {
	m := d.Milliseconds()
	const maxMS = 1<<31 - 1
	if m > maxMS {
		return maxMS
	}
	return int32(m)
}

// nvarcharMax binds free text (errors, messages, output tails) as
// NVARCHAR(MAX): one declared type, so one cached plan, whatever its length.
func nvarcharMax(s string) mssql.NVarCharMax { return mssql.NVarCharMax(s) }
