// Command recorder is a test-only transformer plugin: it appends everything
// it receives (envelope, header, body) to a file and changes nothing, so a
// test can see exactly what a pipeline position of a real node is given.
package main

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/mixmta/mixmta/sdk"
)

// Config names the files every message is appended to.
type Config struct {
	Path string `json:"path" doc:"messages go to PATH-<pid of mixmta>.log, so nodes sharing a config write apart"`
}

// Validate requires a path.
func (c *Config) Validate() error {
	if c.Path == "" {
		return sdk.FieldErrorf("path", "is required")
	}
	return nil
}

type recorder struct {
	mu   sync.Mutex
	path string
}

// Transform appends the message and returns no change.
func (r *recorder) Transform(_ context.Context, m *sdk.Message) (*sdk.Change, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, sdk.Temporary(451, "3.0", "recorder: %v", err)
	}
	defer f.Close()
	fmt.Fprintf(f, "MAIL FROM:<%s> RCPT TO:%q\n%s%s\n", m.Envelope.MailFrom, m.Envelope.RcptTo, m.Header, m.Body)
	return nil, f.Sync()
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "recorder",
		Version: "1.0.0",
		Doc:     "test only: records every message it is given",
		Kinds:   []sdk.Kind{sdk.KindTransformer},
		Needs:   sdk.NeedAll,
		New: func(c Config, _ sdk.Env) (any, error) {
			return &recorder{path: fmt.Sprintf("%s-%d.log", c.Path, os.Getppid())}, nil
		},
	})
}
