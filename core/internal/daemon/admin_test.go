package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// TestShowItemHidesAddressesOutsideTheAddressFields: without addresses,
// `queue show` leaves out the address fields and also hides the
// addresses that other fields carry (a read receipt request, the
// authentication results, a DKIM signature's i=, the subject), keeping
// the rest of those fields; with addresses the header is shown as stored.
func TestShowItemHidesAddressesOutsideTheAddressFields(t *testing.T) {
	q, err := queue.Open(t.TempDir(), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	header := "From: Secret <secret@sender.example>\r\n" +
		"Subject: note from secret@sender.example\r\n" +
		"Disposition-Notification-To: secret@sender.example\r\n" +
		"Authentication-Results: mx.example.net; spf=pass\r\n" +
		"\tsmtp.mailfrom=secret@sender.example\r\n" +
		"DKIM-Signature: v=1; d=sender.example; i=secret@sender.example; s=x\r\n" +
		"\r\n"
	env := sdk.Envelope{MailFrom: "secret@sender.example", RcptTo: []string{"rcpt@example.net"}}
	it, err := q.Accept(env, []byte(header), []byte("body\r\n"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{}
	d, err := ShowItem(cfg, q, it.ID, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(d.Header, "secret@") || strings.Contains(d.Header, "From:") {
		t.Errorf("an address is in the header shown without addresses:\n%s", d.Header)
	}
	for _, kept := range []string{"Subject: note from ***", "Disposition-Notification-To: ***", "spf=pass", "d=sender.example; ***; s=x"} {
		if !strings.Contains(d.Header, kept) {
			t.Errorf("shown header lacks %q:\n%s", kept, d.Header)
		}
	}
	d, err = ShowItem(cfg, q, it.ID, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.Header != header {
		t.Errorf("header with addresses:\n%q\nwant\n%q", d.Header, header)
	}
}
