package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
)

// maxDepth bounds the nesting of values converted from CEL or JSON.
const maxDepth = 64

// toNative converts a CEL value to plain Go: string, int64, uint64,
// float64, bool, nil, []any or map[string]any. Timestamps and durations
// become their text.
func toNative(v ref.Val, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("value is nested too deeply")
	}
	switch v := v.(type) {
	case types.String:
		return string(v), nil
	case types.Int:
		return int64(v), nil
	case types.Uint:
		return uint64(v), nil
	case types.Double:
		return float64(v), nil
	case types.Bool:
		return bool(v), nil
	case types.Null:
		return nil, nil
	case types.Bytes:
		return string(v), nil
	case types.Timestamp:
		return v.Time.UTC().Format(time.RFC3339Nano), nil
	case types.Duration:
		return v.Duration.String(), nil
	case traits.Lister:
		n, ok := v.Size().(types.Int)
		if !ok {
			return nil, errors.New("list has no size")
		}
		out := make([]any, 0, int(n))
		for it := v.Iterator(); it.HasNext() == types.True; {
			el, err := toNative(it.Next(), depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, el)
		}
		return out, nil
	case traits.Mapper:
		out := make(map[string]any)
		for it := v.Iterator(); it.HasNext() == types.True; {
			k := it.Next()
			key, err := toNative(k, depth+1)
			if err != nil {
				return nil, err
			}
			ks, err := textOf(key)
			if err != nil {
				return nil, err
			}
			val, err := toNative(v.Get(k), depth+1)
			if err != nil {
				return nil, err
			}
			out[ks] = val
		}
		return out, nil
	}
	return nil, fmt.Errorf("cannot turn a value of type %s into text", v.Type().TypeName())
}

// textOf formats a plain Go value (as from toNative or decoded JSON) as
// text: strings as is, numbers and booleans formatted, null as "", lists
// and maps as JSON.
func textOf(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case nil:
		return "", nil
	case bool:
		return strconv.FormatBool(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case uint64:
		return strconv.FormatUint(v, 10), nil
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return strconv.FormatFloat(v, 'g', -1, 64), nil
		}
		b, err := json.Marshal(v)
		if err != nil {
			return "", fmt.Errorf("format number: %w", err)
		}
		return string(b), nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", fmt.Errorf("format value as JSON: %w", err)
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// jsonItems parses s as a JSON list of items.
func jsonItems(s string) ([]Item, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var raw any
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("not a JSON list: %w (value %q)", err, clip(s))
	}
	if dec.More() {
		return nil, fmt.Errorf("not a JSON list: text after the list (value %q)", clip(s))
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("not a JSON list (value %q)", clip(s))
	}
	items := make([]Item, 0, len(list))
	for _, el := range list {
		val, err := fromJSON(el, 0)
		if err != nil {
			return nil, err
		}
		text, err := textOf(val)
		if err != nil {
			return nil, err
		}
		items = append(items, Item{Value: val, Text: text})
	}
	return items, nil
}

// fromJSON replaces json.Number with int64 (when whole and in range) or
// float64, so that ids beyond 2^53 keep every digit.
func fromJSON(v any, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("JSON value is nested too deeply")
	}
	switch v := v.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i, nil
		}
		f, err := v.Float64()
		if err != nil {
			return nil, fmt.Errorf("number %s is out of range", v)
		}
		return f, nil
	case []any:
		for i, el := range v {
			c, err := fromJSON(el, depth+1)
			if err != nil {
				return nil, err
			}
			v[i] = c
		}
		return v, nil
	case map[string]any:
		for k, el := range v {
			c, err := fromJSON(el, depth+1)
			if err != nil {
				return nil, err
			}
			v[k] = c
		}
		return v, nil
	}
	return v, nil
}

// paramItems turns a parameter value into items: a JSON list when it
// starts with "[", else comma-separated text.
func paramItems(s string) ([]Item, error) {
	if strings.HasPrefix(strings.TrimSpace(s), "[") {
		return jsonItems(s)
	}
	var items []Item
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			items = append(items, Item{Value: part, Text: part})
		}
	}
	return items, nil
}
