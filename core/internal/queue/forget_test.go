package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/mixmta/mixmta/sdk"
)

// plainText returns, for each token found in the raw bytes of some file
// under dir, the names of those files.
func plainText(t *testing.T, dir string, tokens ...string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, tok := range tokens {
			if bytes.Contains(b, []byte(tok)) {
				out[tok] = append(out[tok], filepath.Base(p))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDeletedItemsCannotBeRecoveredWhileOthersStayQueued: messages, a
// packet and a split message go through the queue and are deleted while
// one message stays queued. After one sync, no file holds any of their
// body or envelope tokens, and with every key slot on disk no sealed value
// of theirs opens; the message still queued opens (the forensic method
// works: the negative control).
func TestDeletedItemsCannotBeRecoveredWhileOthersStayQueued(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir)
	defer q.Close()

	held, err := q.Accept(sdk.Envelope{MailFrom: "held-FROM@example.org", RcptTo: []string{"held-RCPT@example.net"}},
		[]byte("Subject: held-SUBJECT\r\n\r\n"), bytes.Repeat([]byte("held-BODY "), 500), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var gone []string
	for i, size := range []int{10, 5000, 3*ChunkSize + 17} {
		tok := "gone" + string(rune('A'+i))
		gone = append(gone, tok+"-FROM", tok+"-RCPT", tok+"-BODY", tok+"-SUBJECT", tok+"-NEWBODY", tok+"-PACKET")
		body := bytes.Repeat([]byte(tok+"-BODY "), size/10+1)
		it, err := q.Accept(sdk.Envelope{MailFrom: tok + "-FROM@example.org", RcptTo: []string{tok + "-RCPT@example.net", "x@y"}},
			[]byte("Subject: "+tok+"-SUBJECT\r\n\r\n"), body, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		it.Stage = 1
		if err := q.Replace(it, nil, bytes.Repeat([]byte(tok+"-NEWBODY "), size/10+1)); err != nil {
			t.Fatal(err)
		}
		kids, err := q.Split(it, []Child{{Envelope: it.Envelope, Stage: 2},
			{Kind: KindPacketOut, Content: bytes.Repeat([]byte(tok+"-PACKET "), 7000)}})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range kids {
			k.Attempts++
			if err := q.Update(k); err != nil {
				t.Fatal(err)
			}
			if err := q.Delete(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := q.Sync(); err != nil {
		t.Fatal(err)
	}

	heldToks := []string{"held-FROM", "held-RCPT", "held-SUBJECT", "held-BODY"}
	for tok, f := range plainText(t, dir, append(gone, heldToks...)...) {
		t.Errorf("token %s is readable in plain text in %v", tok, f)
	}
	r, err := Recover(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range gone {
		if r.Contains([]byte(tok)) {
			t.Errorf("token %s of a deleted item was recovered with the key file", tok)
		}
	}
	for _, tok := range heldToks {
		if !r.Contains([]byte(tok)) {
			t.Errorf("negative control: token %s of the queued message not recovered (%d keys, %d sealed values, %d opened)", tok, r.Keys, r.Sealed, len(r.Opened))
		}
	}
	if r.Keys != 3 { // the held item, its header and its body
		t.Errorf("key file holds %d keys, want 3", r.Keys)
	}
	if _, err := q.Get(held.ID); err != nil {
		t.Fatal(err)
	}
}

// TestKeyFileAndDirArePrivate: the key file is 0600 inside a 0700 dir.
func TestKeyFileAndDirArePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "q")
	q := open(t, dir)
	defer q.Close()
	fi, err := os.Stat(filepath.Join(dir, keyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %o, want 600", fi.Mode().Perm())
	}
}

// TestCrashLeftoversAreSwept: a key allocated by a change that never
// committed (the process died in between), a deleted item whose key slot
// was not yet zeroed, and chunks of a body whose message was never
// committed are all gone after the next Open; queued items still open.
func TestCrashLeftoversAreSwept(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir)
	kept, err := q.Accept(sdk.Envelope{RcptTo: []string{"a@b"}}, []byte("H: kept\r\n\r\n"), []byte("kept body"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dropped, err := q.Accept(sdk.Envelope{RcptTo: []string{"a@b"}}, []byte("H: dropped\r\n\r\n"), []byte("dropped body"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// A delete committed to badger, but the keys not yet destroyed.
	if err := q.db.Update(func(txn *badger.Txn) error { return (&wtx{q: q, txn: txn}).deleteItem(dropped) }); err != nil {
		t.Fatal(err)
	}
	// A key whose transaction never committed.
	if _, err := q.keys.alloc(NewID()); err != nil {
		t.Fatal(err)
	}
	// A chunk without its meta record.
	orphan := NewID()
	k, _ := q.keys.alloc(orphan)
	if err := q.db.Update(func(txn *badger.Txn) error {
		return txn.Set(chunkKey(orphan, 0), seal(k, orphan, 0, []byte("orphan-CHUNK")))
	}); err != nil {
		t.Fatal(err)
	}
	if err := q.keys.sync(); err != nil {
		t.Fatal(err)
	}
	before := len(q.keys.owners())
	// Simulate the crash: close badger and the key file without any of
	// the queue's own bookkeeping.
	q.syncer.close()
	q.db.Close()
	q.keys.f.Close()
	q.trim.close()
	close(q.gcStop)
	<-q.gcDone

	q = open(t, dir)
	defer q.Close()
	after := q.keys.owners()
	// dropped's item, header and body keys, the uncommitted key and the
	// orphan chunk's key go; kept's three stay.
	if before-len(after) != 5 || len(after) != 3 {
		t.Errorf("sweep destroyed %d of %d keys, want 5 of 8", before-len(after), before)
	}
	if _, err := q.Get(kept.ID); err != nil {
		t.Fatalf("kept item: %v", err)
	}
	if err := q.Sync(); err != nil {
		t.Fatal(err)
	}
	r, err := Recover(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Contains([]byte("orphan-CHUNK")) {
		t.Error("orphan chunk still opens after the sweep")
	}
	if !r.Contains([]byte("kept body")) {
		t.Error("negative control: the queued body does not open")
	}
	if f := plainText(t, dir, "kept body"); len(f) > 0 {
		t.Errorf("queued body stored in plain text: %v", f)
	}
}

// TestStreamedBodyRoundTripsAndAbortForgets: a body written through a
// BodyWriter in odd-sized pieces reads back byte for byte (whole and
// streamed); an aborted body leaves no key, no chunk and nothing that
// opens; a body whose message was never accepted (a crash) is swept at
// the next Open.
func TestStreamedBodyRoundTripsAndAbortForgets(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir)
	body := numberedBody(7, 3*ChunkSize+ChunkSize/2+3)
	w, err := q.NewBody()
	if err != nil {
		t.Fatal(err)
	}
	for off, step := 0, 1; off < len(body); step = step*3 + 1 {
		end := min(len(body), off+step)
		if _, err := w.Write(body[off:end]); err != nil {
			t.Fatal(err)
		}
		off = end
	}
	r, err := w.Open()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(r); !bytes.Equal(got, body) {
		t.Fatalf("body read back before accept: %d bytes, want %d identical", len(got), len(body))
	}
	it, err := q.AcceptBody(sdk.Envelope{RcptTo: []string{"a@b"}}, []byte("H: 1\r\n\r\n"), w, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if it.Size != int64(len("H: 1\r\n\r\n")+len(body)) {
		t.Fatalf("size %d, want %d", it.Size, len("H: 1\r\n\r\n")+len(body))
	}
	whole, err := q.Blob(it.Body)
	if err != nil || !bytes.Equal(whole, body) {
		t.Fatalf("Blob: %d bytes, %v; want %d identical", len(whole), err, len(body))
	}
	br, err := q.BlobReader(it.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(br); !bytes.Equal(got, body) {
		t.Fatalf("BlobReader: %d bytes, want %d identical", len(got), len(body))
	}

	aborted, err := q.NewBody()
	if err != nil {
		t.Fatal(err)
	}
	aborted.Write(bytes.Repeat([]byte("aborted-BODY "), ChunkSize/5))
	aborted.Abort()
	crashed, err := q.NewBody()
	if err != nil {
		t.Fatal(err)
	}
	crashed.Write(bytes.Repeat([]byte("crashed-BODY "), ChunkSize/5))
	crashed.Open() // flush: chunks committed, no meta
	if err := q.Sync(); err != nil {
		t.Fatal(err)
	}
	r1, err := Recover(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Contains([]byte("aborted-BODY")) {
		t.Error("an aborted body still opens")
	}
	if !r1.Contains([]byte("crashed-BODY")) {
		t.Error("negative control: a body being received does not open")
	}
	// Simulated crash: no Close.
	q.syncer.close()
	q.db.Close()
	q.keys.f.Close()
	q.trim.close()
	close(q.gcStop)
	<-q.gcDone

	q = open(t, dir)
	defer q.Close()
	if err := q.Sync(); err != nil {
		t.Fatal(err)
	}
	r2, err := Recover(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Contains([]byte("crashed-BODY")) {
		t.Error("the body of a message never accepted still opens after the sweep")
	}
	if got, err := q.Blob(it.Body); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("accepted body after reopen: %d bytes, %v", len(got), err)
	}
	if r2.Keys != 3 {
		t.Errorf("%d keys after the sweep, want 3 (item, header, body)", r2.Keys)
	}
}

// TestOlderQueueIsSealedNotLost: items written in the layout used before
// values were sealed (plain JSON records, one plain value per blob, plain
// reference counts) are sealed at Open, read back whole, and keep their
// shared blob's reference count.
func TestOlderQueueIsSealedNotLost(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir)
	header, body := []byte("Subject: legacy\r\n\r\n"), numberedBody(3, 300<<10)
	h, b := NewID(), NewID()
	var items []*Item
	err := q.db.Update(func(txn *badger.Txn) error {
		for i := 0; i < 2; i++ {
			it := &Item{ID: NewID(), Envelope: sdk.Envelope{MailFrom: "legacy@example.org", RcptTo: []string{"r@example.net"}},
				Header: h, Body: b, Size: int64(len(header) + len(body)), Deliverer: -1}
			it.Msg = it.ID
			raw, _ := json.Marshal(it)
			if err := txn.Set(key(prefixItem, it.ID), raw); err != nil {
				return err
			}
			items = append(items, it)
		}
		for _, kv := range [][2][]byte{
			{key(prefixBlob, h), header}, {key(prefixCount, h), binary.AppendUvarint(nil, 2)},
			{key(prefixBlob, b), body}, {key(prefixCount, b), binary.AppendUvarint(nil, 2)},
		} {
			if err := txn.Set(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	q.Close()

	q = open(t, dir)
	defer q.Close()
	for _, want := range items {
		got, err := q.Get(want.ID)
		if err != nil || got.Envelope.MailFrom != "legacy@example.org" || got.Body != b {
			t.Fatalf("legacy item after Open: %+v, %v", got, err)
		}
	}
	if got, err := q.Blob(b); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("legacy body: %d bytes, %v; want %d identical", len(got), err, len(body))
	}
	if got, err := q.Blob(h); err != nil || !bytes.Equal(got, header) {
		t.Fatalf("legacy header: %q, %v", got, err)
	}
	if err := q.Delete(items[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Blob(b); err != nil {
		t.Fatalf("shared body gone after one of its two items: %v", err)
	}
	if err := q.Delete(items[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Blob(b); !errors.Is(err, ErrNotFound) {
		t.Fatalf("body still there after both items: %v", err)
	}
}
