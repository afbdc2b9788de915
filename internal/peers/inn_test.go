package peers

import (
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// postRaw posts article (CRLF lines, already dot-stuffed, without the
// final dot) as a reader and returns the reply to the article.
func postRaw(t *testing.T, addr, user, pass, article string) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := textproto.NewConn(conn)
	step := func(line string, expect int) {
		t.Helper()
		if line != "" {
			if err := c.PrintfLine("%s", line); err != nil {
				t.Fatal(err)
			}
		}
		if code, msg, err := c.ReadCodeLine(expect); err != nil {
			t.Fatalf("%s: %d %s: %v", line, code, msg, err)
		}
	}
	step("", 20)
	step("MODE READER", 20)
	if user != "" {
		step("AUTHINFO USER "+user, 381)
		step("AUTHINFO PASS "+pass, 281)
	}
	step("POST", 340)
	if _, err := conn.Write([]byte(article + ".\r\n")); err != nil {
		t.Fatal(err)
	}
	code, msg, _ := c.ReadCodeLine(240)
	return code, msg
}

func TestINNTakesPostAndServesArticle(t *testing.T) {
	inn := INN(t)
	art := "From: a@example.org\r\nNewsgroups: alt.test\r\nSubject: hi\r\nMessage-ID: <peer-test-1@example.test>\r\n\r\n..dot line\r\nbody\r\n"
	if code, msg := postRaw(t, inn.Addr, "", "", art); code != 240 {
		t.Fatalf("POST: %d %s\n%s", code, msg, inn.Log())
	}
	got := inn.WaitArticle(t, "<peer-test-1@example.test>", "", "", 10*time.Second)
	if !strings.Contains(got, "\r\n\r\n.dot line\r\nbody\r\n") {
		t.Fatalf("article body not intact:\n%s", got)
	}
	if n, err := inn.GroupCount("alt.test", "", ""); err != nil || n != 1 {
		t.Fatalf("GroupCount = %d, %v; want 1", n, err)
	}
	art2 := strings.Replace(art, "alt.test", "no.such.group", 1)
	art2 = strings.Replace(art2, "peer-test-1", "peer-test-2", 1)
	if code, _ := postRaw(t, inn.Addr, "", "", art2); code != 441 {
		t.Fatalf("POST to an unknown group: %d, want 441", code)
	}
}

func TestINNWithUsersNeedsAuthinfo(t *testing.T) {
	inn := INN(t, INNConfig{Users: map[string]string{"poster": "s3cret"}})
	if _, _, err := inn.Article("<x@y>", "poster", "wrong"); err == nil || !strings.Contains(err.Error(), "AUTHINFO") {
		t.Fatalf("bad password accepted: %v", err)
	}
	art := "From: a@example.org\r\nNewsgroups: local.test\r\nSubject: hi\r\nMessage-ID: <peer-auth-1@example.test>\r\n\r\nbody\r\n"
	if code, msg := postRaw(t, inn.Addr, "poster", "s3cret", art); code != 240 {
		t.Fatalf("POST after AUTHINFO: %d %s\n%s", code, msg, inn.Log())
	}
	inn.WaitArticle(t, "<peer-auth-1@example.test>", "poster", "s3cret", 10*time.Second)
}
