package main

import (
	"bytes"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

func TestSanitizeDropsFoldedFromContinuation(t *testing.T) {
	in := crlf("From: Alice\n <alice@example.org>\n To: LEAK-CONT1 <evil@example.com>\n\tLEAK-CONT2\nTo: bob@example.net\nSubject: hi\n\n")
	r := sanitize(t, in, nil)
	got := originalPart(t, r.Header)
	want := "To: bob@example.net\r\nSubject: hi\r\n\r\n"
	if got != want {
		t.Fatalf("want original part\n%q\ngot\n%q", want, got)
	}
	if bytes.Contains(r.Header, []byte("LEAK")) || bytes.Contains(r.Header, []byte("alice")) {
		t.Fatalf("a continuation line of From survived:\n%s", r.Header)
	}
}

func TestSanitizeDropsIdentifyingFields(t *testing.T) {
	cases := []struct{ name, field string }{
		{"Bcc", "Bcc: Boss <boss.LEAK@example.org>"},
		{"Bcc folded", "Bcc: a@example.org,\n b.LEAK@example.org"},
		{"Cc", "Cc: LEAK <cc@example.net>"},
		{"Sender", "Sender: LEAK <secretary@example.org>"},
		{"Reply-To", "Reply-To: LEAK@example.com"},
		{"Received", "Received: from host.LEAK by mx\n\tfor <x@example.net>; Tue, 1 Jan 2025 00:00:00 +0000"},
		{"Return-Path", "Return-Path: <LEAK@example.org>"},
		{"X-Mailer", "X-Mailer: LEAK Mail 1.0"},
		{"X-Originating-IP", "X-Originating-IP: [203.0.113.5] LEAK"},
		{"DKIM-Signature", "DKIM-Signature: v=1; d=example.org;\n\ts=LEAK; b=abc"},
		{"Message-ID", "Message-ID: <LEAK@laptop.example.org>"},
		{"Date", "Date: Tue, 1 Jan 2025 10:00:00 +0530 (LEAK)"},
		{"User-Agent", "User-Agent: LEAK/1.0"},
		{"Organization", "Organization: LEAK Inc."},
		{"Resent-From", "Resent-From: LEAK@example.org"},
		{"List-Unsubscribe", "List-Unsubscribe: <https://example.org/u/LEAK>"},
		{"Authentication-Results", "Authentication-Results: mx; spf=pass smtp.mailfrom=LEAK@example.org"},
		{"lower-case from", "from: LEAK@example.org"},
		{"upper-case SENDER", "SENDER: LEAK@example.org"},
		{"WSP before colon", "From : LEAK@example.org"},
		{"tab before colon", "Bcc\t: LEAK@example.org"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := crlf("To: bob@example.net\n" + c.field + "\nSubject: hi\n\n")
			r := sanitize(t, in, nil)
			if bytes.Contains(r.Header, []byte("LEAK")) {
				t.Fatalf("field %q leaked:\n%s", c.field, r.Header)
			}
			if want := "To: bob@example.net\r\nSubject: hi\r\n\r\n"; originalPart(t, r.Header) != want {
				t.Fatalf("want original part %q, got %q", want, originalPart(t, r.Header))
			}
			if r.Dropped != 1 || r.Kept != 2 {
				t.Fatalf("want 1 dropped and 2 kept, got %d dropped and %d kept", r.Dropped, r.Kept)
			}
		})
	}
}

func TestSanitizeKeepsAllowedValuesByteForByte(t *testing.T) {
	cases := []struct{ name, field string }{
		{"RFC 2047 Q", "Subject: =?ISO-8859-1?Q?Reuni=F3n_ma=F1ana?="},
		{"RFC 2047 B folded", "Subject: =?UTF-8?B?5LyB55S75pu444Gr44Gk44GE44Gm?=\r\n =?UTF-8?B?77yI5pyA57WC54mI77yJ?="},
		{"RFC 6532 UTF-8", "To: Zoë Ångström <zoë@exämple.net>"},
		{"UTF-8 emoji subject", "Subject: Grüße – 🎉"},
		{"invalid UTF-8", "Subject: \xff\xfe\xc3\x28 latin-1 caf\xe9"},
		{"control byte", "Subject: bell\x07 and escape\x1b[0m"},
		{"folded To with tab", "To: one@example.net,\r\n\ttwo@example.net,\r\n  three@example.net"},
		{"no space after colon", "Subject:x"},
		{"empty value", "Subject:"},
		{"trailing WSP", "Subject: trailing  \t"},
		{"value looks like a field", "Subject: Bcc: not a field"},
		{"Content-Type parameters", "Content-Type: multipart/mixed;\r\n boundary=\"----=_Part_1_2.3\""},
		{"long line", "Subject: " + strings.Repeat("word ", 180)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := sanitize(t, c.field+"\r\n\r\n", nil)
			want := c.field + "\r\n\r\n"
			if got := originalPart(t, r.Header); got != want {
				t.Fatalf("want\n%q\ngot\n%q", want, got)
			}
		})
	}
}

func TestSanitizeKeepsFirstOfDuplicateSingleInstanceFields(t *testing.T) {
	in := crlf(`To: first@example.net
Subject: first subject
To: LEAK-TO2 <second@example.net>
Subject: LEAK-SUBJECT2
MIME-Version: 1.0
MIME-Version: 1.0 (LEAK-MIME2)
Content-Type: text/plain
content-type: text/html; name=LEAK-CT2
References: <a@example.org>
References: <LEAK-REF2@example.org>
In-Reply-To: <a@example.org>
In-Reply-To: <LEAK-IRT2@example.org>
Newsgroups: alt.test
Newsgroups: LEAK.group

`)
	r := sanitize(t, in, nil)
	want := crlf(`To: first@example.net
Subject: first subject
Newsgroups: alt.test
References: <a@example.org>
In-Reply-To: <a@example.org>
MIME-Version: 1.0
Content-Type: text/plain

`)
	if got := originalPart(t, r.Header); got != want {
		t.Fatalf("want\n%s\ngot\n%s", want, got)
	}
	if r.Duplicates != 7 {
		t.Fatalf("want 7 duplicates counted, got %d", r.Duplicates)
	}
}

func TestSanitizeNormalizesMIMEVersion(t *testing.T) {
	for _, v := range []string{"1.0", "1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))", "1.0\r\n (Produced by LEAK-MUA)", "(c) 1.0", "2.0"} {
		r := sanitize(t, "MIME-Version: "+v+"\r\n\r\n", nil)
		if got, want := originalPart(t, r.Header), "MIME-Version: 1.0\r\n\r\n"; got != want {
			t.Fatalf("MIME-Version %q: want %q, got %q", v, want, got)
		}
	}
}

func TestSanitizeKeepsRepeatableAllowedFields(t *testing.T) {
	in := crlf("Comments: one\nComments: two\nKeywords: a\nKeywords: b\n\n")
	r := sanitize(t, in, func(c *Config) { c.Allow = []string{"Comments", "Keywords"} })
	want := crlf("Comments: one\nComments: two\nKeywords: a\nKeywords: b\n\n")
	if got := originalPart(t, r.Header); got != want {
		t.Fatalf("want\n%q\ngot\n%q", want, got)
	}
}

func TestSanitizeAcceptsLFOnlyAndEmitsCRLF(t *testing.T) {
	in := "From: x@example.org\nTo: bob@example.net\nSubject: folded\n  second line\n\n"
	r := sanitize(t, in, nil)
	want := "To: bob@example.net\r\nSubject: folded\r\n  second line\r\n\r\n"
	if got := originalPart(t, r.Header); got != want {
		t.Fatalf("want\n%q\ngot\n%q", want, got)
	}
	if n := bytes.Count(r.Header, []byte("\n")); n != bytes.Count(r.Header, []byte("\r\n")) {
		t.Fatalf("a bare LF in the output:\n%q", r.Header)
	}
}

func TestSanitizeAcceptsMissingFinalEmptyLine(t *testing.T) {
	for _, in := range []string{"To: bob@example.net", "To: bob@example.net\r\n", "To: bob@example.net\n"} {
		r := sanitize(t, in, nil)
		if got, want := originalPart(t, r.Header), "To: bob@example.net\r\n\r\n"; got != want {
			t.Fatalf("input %q: want %q, got %q", in, want, got)
		}
	}
}

func TestSanitizeDropsLinesThatAreNotFields(t *testing.T) {
	cases := []struct {
		name, lines string
		malformed   int
	}{
		{"no colon", "garbage LEAK line\n", 1},
		{"no colon with continuation", "garbage LEAK\n continued LEAK\n\tagain LEAK\n", 1},
		{"empty name", ": LEAK\n", 1},
		{"space inside name", "Bad Name: LEAK\n", 1},
		{"control byte in name", "X-\x01Ctl: LEAK\n", 1},
		{"8-bit name", "Sübject: LEAK\n", 1},
		{"bare CR in value", "Subject: hi\rBcc: LEAK\n", 1},
		{"bare CR in continuation", "Subject: hi\n more\rBcc: LEAK\n", 1},
		{"NUL in value", "Subject: hi\x00LEAK\n", 1},
		{"two garbage runs", "LEAK one\nLEAK two\n", 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := crlf("To: bob@example.net\n" + c.lines + "MIME-Version: 1.0\n\n")
			r := sanitize(t, in, nil)
			if bytes.Contains(r.Header, []byte("LEAK")) {
				t.Fatalf("a line that is not a field leaked:\n%q", r.Header)
			}
			if want := "To: bob@example.net\r\nMIME-Version: 1.0\r\n\r\n"; originalPart(t, r.Header) != want {
				t.Fatalf("want %q, got %q", want, originalPart(t, r.Header))
			}
			if r.Malformed != c.malformed {
				t.Fatalf("want %d malformed, got %d", c.malformed, r.Malformed)
			}
		})
	}
}

func TestSanitizeDropsLeadingWhitespaceFirstLine(t *testing.T) {
	for _, lead := range []string{" LEAK-1 no field owns me\n\tLEAK-2\n", "\tLEAK-1\n", " \n"} {
		r := sanitize(t, crlf(lead+"To: bob@example.net\n\n"), nil)
		if got, want := originalPart(t, r.Header), "To: bob@example.net\r\n\r\n"; got != want {
			t.Fatalf("lead %q: want %q, got %q", lead, want, got)
		}
		if r.Malformed != 1 {
			t.Fatalf("lead %q: want 1 malformed, got %d", lead, r.Malformed)
		}
	}
}

func TestSanitizeDropsBytesAfterTheEmptyLine(t *testing.T) {
	r := sanitize(t, "To: bob@example.net\r\n\r\nBcc: LEAK@example.org\r\n", nil)
	if bytes.Contains(r.Header, []byte("LEAK")) || r.Malformed != 1 {
		t.Fatalf("want bytes after the empty line dropped and counted; malformed=%d:\n%q", r.Malformed, r.Header)
	}
}

func TestSanitizeDropsWhitespaceOnlyContinuationLines(t *testing.T) {
	r := sanitize(t, "Subject: a\r\n \r\n\t\r\n b\r\n\r\n", nil)
	if got, want := originalPart(t, r.Header), "Subject: a\r\n b\r\n\r\n"; got != want {
		t.Fatalf("want %q, got %q", want, got)
	}
}

func TestSanitizeRewritesWSPBeforeColonAndCanonicalizesNames(t *testing.T) {
	in := crlf("SUBJECT : hello\nmime-version: 1.0\ncontent-type: text/plain\nCONTENT-TRANSFER-ENCODING: 7bit\nContent-id: <x@y>\n\n")
	r := sanitize(t, in, func(c *Config) { c.Allow = append(c.Allow, "content-id") })
	want := crlf("Subject: hello\nMIME-Version: 1.0\nContent-Type: text/plain\nContent-Transfer-Encoding: 7bit\nContent-ID: <x@y>\n\n")
	if got := originalPart(t, r.Header); got != want {
		t.Fatalf("want\n%s\ngot\n%s", want, got)
	}
}

func TestSanitizeOrdersFieldsByAllowList(t *testing.T) {
	// Thunderbird, Outlook and mutt order these differently; the output
	// must not tell them apart.
	in := crlf("Content-Transfer-Encoding: 8bit\nContent-Type: text/plain\nMIME-Version: 1.0\nSubject: s\nIn-Reply-To: <a@b>\nTo: t@example.net\n\n")
	r := sanitize(t, in, nil)
	got := names(t, r.Header)
	want := []string{"Date", "From", "Message-ID", "To", "Subject", "In-Reply-To", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"}
	if !slices.Equal(got, want) {
		t.Fatalf("want order %v, got %v", want, got)
	}
}

// TestSanitizeAllowsExactNamesOnly: the default list keeps MIME-Version,
// Content-Type and Content-Transfer-Encoding and no other Content-*
// field: a top-level Content-ID or Content-Description names the sender's
// host or file, Content-X-Originating-IP their address. A name listed in
// allow is kept; nothing else with the same prefix is.
func TestSanitizeAllowsExactNamesOnly(t *testing.T) {
	in := crlf("To: t@example.net\nContent-Type: text/plain\nContent-ID: <LEAK1@laptop.home.example>\n" +
		"Content-Description: LEAK2 scan of passport\nContent-X-Originating-IP: [LEAK3]\nContent-Disposition: inline; filename=LEAK4.txt\n" +
		"Content-Language: LEAK5\nContent-Location: file:///home/LEAK6\nContent-MD5: LEAK7\nContent-Transfer-Encoding: 7bit\n\n")
	r := sanitize(t, in, nil)
	if bytes.Contains(r.Header, []byte("LEAK")) {
		t.Fatalf("a Content-* field outside the allow list was kept:\n%s", r.Header)
	}
	if got, want := originalPart(t, r.Header), crlf("To: t@example.net\nContent-Type: text/plain\nContent-Transfer-Encoding: 7bit\n\n"); got != want {
		t.Fatalf("want\n%s\ngot\n%s", want, got)
	}
	if r.Dropped != 7 {
		t.Errorf("dropped %d fields, want the 7 other Content-* fields", r.Dropped)
	}
	r = sanitize(t, in, func(c *Config) { c.Allow = append(c.Allow, "Content-ID", "Content-Description") })
	if !bytes.Contains(r.Header, []byte("Content-ID: <LEAK1@")) || !bytes.Contains(r.Header, []byte("Content-Description: LEAK2")) {
		t.Fatalf("configured Content-ID/Content-Description not kept:\n%s", r.Header)
	}
	if bytes.Contains(r.Header, []byte("LEAK3")) {
		t.Fatalf("Content-X-Originating-IP kept:\n%s", r.Header)
	}
}

func TestSanitizeCustomAllowList(t *testing.T) {
	in := crlf("To: t@example.net\nX-Keep-One: 1\nx-keep-two: LEAK\nX-Other: LEAK\nCc: c@example.net\nSubject: LEAK\n\n")
	r := sanitize(t, in, func(c *Config) { c.Allow = []string{"cc", "x-keep-one", "To"} })
	want := crlf("Cc: c@example.net\nX-Keep-One: 1\nTo: t@example.net\n\n")
	if got := originalPart(t, r.Header); got != want {
		t.Fatalf("want\n%s\ngot\n%s", want, got)
	}
}

var (
	dateRE  = regexp.MustCompile(`^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-2][0-9]:[0-5][0-9]:[0-5][0-9] \+0000$`)
	msgIDRE = regexp.MustCompile(`^<[0-9a-f]{32}@anonymous\.invalid>$`)
)

func generated(t testing.TB, out []byte) (date, from, msgID string) {
	t.Helper()
	lines := strings.SplitN(string(out), "\r\n", 4)
	if len(lines) < 4 {
		t.Fatalf("short output %q", out)
	}
	date, _ = strings.CutPrefix(lines[0], "Date: ")
	from, _ = strings.CutPrefix(lines[1], "From: ")
	msgID, _ = strings.CutPrefix(lines[2], "Message-ID: ")
	return
}

func TestSanitizeReplacesFromMessageIDAndDate(t *testing.T) {
	in := crlf("From: LEAK <a@example.org>\nDate: Tue, 1 Jan 2025 10:00:00 +0530\nMessage-ID: <LEAK@host>\nTo: b@example.net\n\n")
	r := sanitize(t, in, nil)
	date, from, id := generated(t, r.Header)
	if from != "Anonymous <nobody@anonymous.invalid>" {
		t.Fatalf("want the default From, got %q", from)
	}
	if !dateRE.MatchString(date) || date != "Tue, 04 Mar 2025 05:00:00 +0000" {
		t.Fatalf("want Date \"Tue, 04 Mar 2025 05:00:00 +0000\" (testNow rounded down to the hour), got %q", date)
	}
	if !msgIDRE.MatchString(id) {
		t.Fatalf("Message-ID %q does not match %s", id, msgIDRE)
	}
	if n := names(t, r.Header); !slices.Equal(n, []string{"Date", "From", "Message-ID", "To"}) {
		t.Fatalf("want one each of Date, From, Message-ID and the To, got %v", n)
	}
	if r.Dropped != 3 {
		t.Fatalf("want the original From, Date, Message-ID counted as dropped, got %d", r.Dropped)
	}

	r = sanitize(t, "To: b@example.net\r\n\r\n", func(c *Config) {
		c.From = `"Remailer" <remailer@example.org>`
		c.MessageIDDomain = "mix.example.org"
	})
	_, from, id = generated(t, r.Header)
	if from != `"Remailer" <remailer@example.org>` || !regexp.MustCompile(`^<[0-9a-f]{32}@mix\.example\.org>$`).MatchString(id) {
		t.Fatalf("configured From/domain not used: From %q, Message-ID %q", from, id)
	}
}

func TestSanitizeMessageIDIsFreshRandomness(t *testing.T) {
	s := NewSanitizer(testConfig(t, nil))
	seen := map[string]bool{}
	for range 1000 {
		r, err := s.Sanitize(nil, testNow)
		if err != nil {
			t.Fatal(err)
		}
		_, _, id := generated(t, r.Header)
		if seen[id] {
			t.Fatalf("Message-ID %s repeated within 1000 messages", id)
		}
		seen[id] = true
	}
}

func TestSanitizeDateRoundsDownInUTC(t *testing.T) {
	ist := time.FixedZone("IST", 5*3600+1800)
	cases := []struct {
		now   time.Time
		round time.Duration
		want  string
	}{
		{testNow, 0, "Tue, 04 Mar 2025 05:06:07 +0000"},
		{testNow, time.Second, "Tue, 04 Mar 2025 05:06:07 +0000"},
		{testNow, 15 * time.Minute, "Tue, 04 Mar 2025 05:00:00 +0000"},
		{testNow, time.Hour, "Tue, 04 Mar 2025 05:00:00 +0000"},
		{testNow, 24 * time.Hour, "Tue, 04 Mar 2025 00:00:00 +0000"},
		{time.Date(2025, 3, 4, 5, 59, 59, 999_999_999, time.UTC), time.Hour, "Tue, 04 Mar 2025 05:00:00 +0000"},
		{time.Date(2025, 3, 4, 6, 0, 0, 0, time.UTC), time.Hour, "Tue, 04 Mar 2025 06:00:00 +0000"},
		// 10:36 in India is 05:06 UTC: the zone must not show, nor shift the hour.
		{time.Date(2025, 3, 4, 10, 36, 7, 0, ist), time.Hour, "Tue, 04 Mar 2025 05:00:00 +0000"},
		{time.Date(2025, 3, 4, 10, 36, 7, 0, ist), 0, "Tue, 04 Mar 2025 05:06:07 +0000"},
		{time.Date(2025, 1, 1, 0, 30, 0, 0, time.UTC), time.Hour, "Wed, 01 Jan 2025 00:00:00 +0000"},
	}
	for _, c := range cases {
		s := NewSanitizer(testConfig(t, func(cfg *Config) { cfg.DateRound = sdk.Duration(c.round) }))
		r, err := s.Sanitize(nil, c.now)
		if err != nil {
			t.Fatal(err)
		}
		if date, _, _ := generated(t, r.Header); date != c.want {
			t.Errorf("now %s, date_round %s: want %q, got %q", c.now, c.round, c.want, date)
		}
	}
}

func TestSanitizeDateFuzzStaysInBounds(t *testing.T) {
	const fuzz = 6 * time.Hour
	for _, round := range []time.Duration{0, time.Hour} {
		s := NewSanitizer(testConfig(t, func(c *Config) {
			c.DateFuzz = sdk.Duration(fuzz)
			c.DateRound = sdk.Duration(round)
		}))
		lo := testNow.Add(-fuzz - max(round, time.Second))
		distinct := map[string]bool{}
		var earliest, latest time.Time
		for i := range 2000 {
			r, err := s.Sanitize(nil, testNow)
			if err != nil {
				t.Fatal(err)
			}
			date, _, _ := generated(t, r.Header)
			d, err := time.Parse(DateLayout, date)
			if err != nil {
				t.Fatalf("Date %q does not parse: %v", date, err)
			}
			if d.After(testNow) || !d.After(lo) {
				t.Fatalf("date_round %s: Date %s outside (%s, %s]", round, d, lo, testNow)
			}
			if i == 0 || d.Before(earliest) {
				earliest = d
			}
			if d.After(latest) {
				latest = d
			}
			distinct[date] = true
		}
		// 2000 uniform draws over 6 h leave no 1-hour gap at either end
		// except with probability ~2000*(5/6)^2000.
		if earliest.After(testNow.Add(-fuzz+time.Hour)) || latest.Before(testNow.Add(-time.Hour-round)) {
			t.Fatalf("date_round %s: fuzz does not cover its range: earliest %s latest %s", round, earliest, latest)
		}
		// 2000 draws over 21,600 seconds give ~1,908 distinct values on
		// average (birthday collisions), with a standard deviation near 9.
		if round == 0 && len(distinct) < 1800 {
			t.Fatalf("only %d distinct dates in 2000 (expected ~1908): fuzz is not random", len(distinct))
		}
		if round == time.Hour && len(distinct) != 7 && len(distinct) != 6 {
			t.Fatalf("date_round 1h over a 6h fuzz: want 6 or 7 distinct hours, got %d", len(distinct))
		}
	}
}

func TestSanitizeAppendsAddHeaders(t *testing.T) {
	r := sanitize(t, "To: b@example.net\r\nComments: LEAK\r\n\r\n", func(c *Config) {
		c.AddHeaders = []string{"Comments: This message was sent through an anonymous remailer", "X-Anon: yes"}
	})
	want := crlf("To: b@example.net\nComments: This message was sent through an anonymous remailer\nX-Anon: yes\n\n")
	if got := originalPart(t, r.Header); got != want {
		t.Fatalf("want\n%s\ngot\n%s", want, got)
	}
}

func TestSanitizeEmptyHeaderGetsOnlyGeneratedFields(t *testing.T) {
	for _, in := range []string{"", "\r\n", "\n"} {
		r := sanitize(t, in, nil)
		if got := originalPart(t, r.Header); got != "\r\n" {
			t.Fatalf("input %q: want only the empty line after the generated fields, got %q", in, got)
		}
		if r.Removed() != 0 || r.Kept != 0 {
			t.Fatalf("input %q: want nothing counted, got %+v", in, r)
		}
	}
}

func TestSanitizeFailsWhenRandomnessFails(t *testing.T) {
	for _, fuzz := range []time.Duration{0, time.Hour} {
		s := NewSanitizer(testConfig(t, func(c *Config) { c.DateFuzz = sdk.Duration(fuzz) }))
		s.rand = failingReader{}
		if _, err := s.Sanitize([]byte("To: a@b\r\n\r\n"), testNow); err == nil {
			t.Fatalf("date_fuzz %s: want an error when the random source fails, got none", fuzz)
		}
	}
}

func TestSanitizeSecondPassKeepsEverythingItKept(t *testing.T) {
	in := crlf("From: LEAK\nTo: a@example.net,\n b@example.net\nSubject: =?UTF-8?Q?h=C3=A9?=\nX-A: LEAK\nMIME-Version: 1.0\nContent-Type: text/plain\n\n")
	s := NewSanitizer(testConfig(t, nil))
	first, err := s.Sanitize([]byte(in), testNow)
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.Sanitize(first.Header, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if originalPart(t, first.Header) != originalPart(t, second.Header) || second.Dropped != 3 || second.Malformed+second.Duplicates != 0 {
		t.Fatalf("second pass changed the kept fields or dropped more than From/Date/Message-ID:\nfirst  %q\nsecond %q (%+v)", first.Header, second.Header, second)
	}
}

// BenchmarkSanitize1MiB measures a header section at the core's 1 MiB cap:
// ~25,000 fields (Received folded, To and Content-Type repeated, X- fields,
// Comments, lines without a colon).
func BenchmarkSanitize1MiB(b *testing.B) {
	h := bigHeader(1 << 20)
	s := NewSanitizer(testConfig(b, nil))
	b.SetBytes(int64(len(h)))
	for b.Loop() {
		if _, err := s.Sanitize(h, testNow); err != nil {
			b.Fatal(err)
		}
	}
}

func bigHeader(size int) []byte {
	var buf bytes.Buffer
	for i := 0; buf.Len() < size-64; i++ {
		switch i % 6 {
		case 0:
			buf.WriteString("Received: from host by mx; Tue, 1 Jan 2025 00:00:00 +0000\r\n\tfor <x@example.net>\r\n")
		case 1:
			buf.WriteString("To: someone@example.net\r\n")
		case 2:
			buf.WriteString("X-Filler: abcdefghijklmnopqrstuvwxyz0123456789\r\n")
		case 3:
			buf.WriteString("Content-Type: text/plain;\r\n charset=us-ascii\r\n")
		case 4:
			buf.WriteString("Comments: repeated\r\n")
		case 5:
			buf.WriteString("garbage line without colon\r\n")
		}
	}
	buf.WriteString("\r\n")
	return buf.Bytes()
}

func TestSanitizeScalesLinearly(t *testing.T) {
	// Time per byte at 1 MiB must stay within 8x of that at 64 KiB: a
	// quadratic parser is ~16x worse, linear code is ~1x.
	s := NewSanitizer(testConfig(t, nil))
	perByte := func(size int) float64 {
		h := bigHeader(size)
		best := time.Duration(1 << 62)
		for range 5 {
			start := time.Now()
			if _, err := s.Sanitize(h, testNow); err != nil {
				t.Fatal(err)
			}
			best = min(best, time.Since(start))
		}
		return float64(best) / float64(len(h))
	}
	small, large := perByte(64<<10), perByte(1<<20)
	if large > 8*small {
		t.Fatalf("per-byte cost grew %.1fx from 64 KiB to 1 MiB (small %.1f ns/B, large %.1f ns/B)", large/small, small, large)
	}
	t.Logf("small %.2f ns/B, large %.2f ns/B", small, large)
}

// BenchmarkSanitizeOutlookHeader measures a typical header section (the
// Outlook message of the corpus: 1,037 bytes, 20 fields).
func BenchmarkSanitizeOutlookHeader(b *testing.B) {
	raw, err := os.ReadFile("testdata/corpus/25-outlook.eml")
	if err != nil {
		b.Fatal(err)
	}
	h, _ := splitMessage(raw)
	s := NewSanitizer(testConfig(b, nil))
	b.SetBytes(int64(len(h)))
	for b.Loop() {
		if _, err := s.Sanitize(h, testNow); err != nil {
			b.Fatal(err)
		}
	}
}
