package sdk

import (
	"errors"
	"fmt"
	"strings"
)

// Error is a stage failure with its SMTP meaning: a reply code
// (RFC 5321 §4.2) and an enhanced status code (RFC 3463). The core uses Code
// and Enhanced in SMTP replies for checkers, and Temporary to decide whether
// a delivery is retried.
type Error struct {
	// Temporary: 4xx, retry later. Otherwise 5xx, give up.
	Temporary bool
	// Code is the SMTP reply code (e.g. 451, 550). 0 means 451 or 554 by
	// Temporary.
	Code int
	// Enhanced is the RFC 3463 code without class, e.g. "7.1" for x.7.1, or
	// the full code "5.7.1". "" means x.0.0.
	Enhanced string
	// Message is shown to the SMTP client for checkers; it must not carry
	// addresses or content.
	Message string
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("%d %s %s", e.SMTPCode(), e.EnhancedCode(), e.Message)
}

// SMTPCode returns Code, or 451 (temporary) / 554 (permanent) when unset.
func (e *Error) SMTPCode() int {
	if e.Code != 0 {
		return e.Code
	}
	if e.Temporary {
		return 451
	}
	return 554
}

// EnhancedCode returns the full RFC 3463 code, e.g. "5.7.1".
func (e *Error) EnhancedCode() string {
	class := "5"
	if e.Temporary {
		class = "4"
	}
	switch {
	case e.Enhanced == "":
		return class + ".0.0"
	case strings.Count(e.Enhanced, ".") == 2:
		return e.Enhanced
	default:
		return class + "." + e.Enhanced
	}
}

// Temporary returns a temporary failure (4xx). enhanced is an RFC 3463 code
// without its class ("4.2" means 4.4.2).
func Temporary(code int, enhanced, format string, args ...any) *Error {
	return &Error{Temporary: true, Code: code, Enhanced: enhanced, Message: fmt.Sprintf(format, args...)}
}

// Permanent returns a permanent failure (5xx). enhanced is an RFC 3463 code
// without its class ("7.1" means 5.7.1).
func Permanent(code int, enhanced, format string, args ...any) *Error {
	return &Error{Code: code, Enhanced: enhanced, Message: fmt.Sprintf(format, args...)}
}

// AsError classifies any error: an *Error (also wrapped) is returned as is;
// anything else becomes a temporary 451 4.3.0 failure, so an unexpected
// error never turns into lost mail. AsError(nil) is nil.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Temporary: true, Code: 451, Enhanced: "3.0", Message: err.Error()}
}

// IsPermanent reports whether err is a permanent failure.
func IsPermanent(err error) bool {
	e := AsError(err)
	return e != nil && !e.Temporary
}
