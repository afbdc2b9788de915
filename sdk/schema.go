package sdk

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Duration is a config duration written as a string: Go duration syntax
// ("90s", "1h30m", "250ms") plus a "d" suffix for days ("2d", "1.5d").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// ParseDuration parses Go duration syntax plus a "d" (24 h) suffix.
// It returns an error for anything else, including negative values.
func ParseDuration(s string) (Duration, error) {
	var v time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		f, err := strconv.ParseFloat(days, 64)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		v = time.Duration(f * float64(24*time.Hour))
	} else {
		var err error
		if v, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("invalid duration %q (use e.g. 30s, 5m, 1h, 2d)", s)
		}
	}
	if v < 0 {
		return 0, fmt.Errorf("invalid duration %q: negative", s)
	}
	return Duration(v), nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\"")
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Schema describes a config value, shaped like JSON Schema: type is one of
// "object", "array", "string", "integer", "number", "boolean"; format
// "duration" marks a Duration string. An object with Properties accepts
// exactly those keys; an object with AdditionalProperties is a map.
type Schema struct {
	Type                 string             `json:"type"`
	Format               string             `json:"format,omitempty"`
	Description          string             `json:"description,omitempty"`
	Default              any                `json:"default,omitempty"`
	Properties           map[string]*Schema `json:"properties,omitempty"`
	Required             []string           `json:"required,omitempty"`
	Items                *Schema            `json:"items,omitempty"`
	AdditionalProperties *Schema            `json:"additionalProperties,omitempty"`
}

var durationType = reflect.TypeOf(Duration(0))

// SchemaOf derives the Schema of a config struct from its fields: the
// `json` tag names a key, `doc` describes it, `required:"true"` makes it
// required, and the value in v is the default. Unexported fields and fields
// tagged `json:"-"` are skipped. It panics on a type it cannot describe
// (channels, funcs, interfaces): that is a bug in the plugin, found at once.
func SchemaOf(v any) *Schema {
	return schemaOf(reflect.ValueOf(v))
}

func schemaOf(v reflect.Value) *Schema {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v = reflect.New(v.Type().Elem()).Elem()
		} else {
			v = v.Elem()
		}
	}
	t := v.Type()
	if t == durationType {
		return &Schema{Type: "string", Format: "duration", Default: nonZero(v, Duration(v.Int()).String())}
	}
	switch t.Kind() {
	case reflect.String:
		return &Schema{Type: "string", Default: nonZero(v, v.String())}
	case reflect.Bool:
		return &Schema{Type: "boolean", Default: nonZero(v, v.Bool())}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return &Schema{Type: "integer", Default: nonZero(v, v.Int())}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return &Schema{Type: "integer", Default: nonZero(v, v.Uint())}
	case reflect.Float32, reflect.Float64:
		return &Schema{Type: "number", Default: nonZero(v, v.Float())}
	case reflect.Slice, reflect.Array:
		s := &Schema{Type: "array", Items: schemaOf(reflect.New(t.Elem()).Elem())}
		if v.Len() > 0 {
			s.Default = v.Interface()
		}
		return s
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			panic("sdk: config map keys must be strings: " + t.String())
		}
		s := &Schema{Type: "object", AdditionalProperties: schemaOf(reflect.New(t.Elem()).Elem())}
		if v.Len() > 0 {
			s.Default = v.Interface()
		}
		return s
	case reflect.Struct:
		s := &Schema{Type: "object", Properties: map[string]*Schema{}}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fs := schemaOf(v.Field(i))
			fs.Description = f.Tag.Get("doc")
			if f.Tag.Get("required") == "true" {
				s.Required = append(s.Required, name)
				fs.Default = nil
			}
			s.Properties[name] = fs
		}
		return s
	}
	panic("sdk: config type cannot be described: " + t.String())
}

func nonZero(v reflect.Value, x any) any {
	if v.IsZero() {
		return nil
	}
	return x
}

// Validator is implemented by a config struct that checks itself after
// decoding. Return a *FieldError to point at one key.
type Validator interface {
	Validate() error
}

// FieldError is a config error about one key, named by its dotted path
// ("tls.policy"), so the core can report the file:line of that key.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// FieldErrorf returns a *FieldError for key field.
func FieldErrorf(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}
