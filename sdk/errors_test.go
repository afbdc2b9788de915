package sdk

import (
	"errors"
	"fmt"
	"testing"
)

func TestErrorCodesTable(t *testing.T) {
	cases := []struct {
		err      *Error
		code     int
		enhanced string
	}{
		{Permanent(550, "1.1", "x"), 550, "5.1.1"},
		{Permanent(550, "5.7.1", "x"), 550, "5.7.1"},
		{Temporary(451, "4.1", "x"), 451, "4.4.1"},
		{Temporary(0, "", "x"), 451, "4.0.0"},
		{Permanent(0, "", "x"), 554, "5.0.0"},
	}
	for _, c := range cases {
		if c.err.SMTPCode() != c.code || c.err.EnhancedCode() != c.enhanced {
			t.Errorf("%#v: got %d %s, want %d %s", c.err, c.err.SMTPCode(), c.err.EnhancedCode(), c.code, c.enhanced)
		}
	}
}

func TestAsErrorTreatsUnknownErrorsAsTemporary(t *testing.T) {
	if AsError(nil) != nil {
		t.Fatal("AsError(nil) != nil")
	}
	e := AsError(errors.New("boom"))
	if !e.Temporary || e.SMTPCode() != 451 {
		t.Fatalf("plain error became %+v, want temporary 451", e)
	}
	wrapped := fmt.Errorf("ctx: %w", Permanent(550, "1.1", "no"))
	if !IsPermanent(wrapped) {
		t.Fatal("wrapped permanent error not recognised")
	}
}
