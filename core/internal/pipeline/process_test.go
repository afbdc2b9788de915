package pipeline

import (
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

// sharedStage is a fakeStage served by plugin process proc.
type sharedStage struct {
	fakeStage
	proc *int
}

func (s *sharedStage) Process() any { return s.proc }

// TestStagesOfOneProcessShareTheSuspectLock: a suspect item is called
// alone on its stage so that a crash is its own; when one plugin process
// serves several stages, a crash fails the calls of all of them, so the
// stages share the lock that keeps the item alone, and a stage of another
// process does not.
func TestStagesOfOneProcessShareTheSuspectLock(t *testing.T) {
	p1, p2 := new(int), new(int)
	stages := []Stage{
		{Name: "delay", Kind: sdk.KindDelayer, Impl: &sharedStage{proc: p1}},
		{Name: "route", Kind: sdk.KindRouter, Impl: &sharedStage{proc: p2}},
		{Name: "exit-delay", Kind: sdk.KindDelayer, Impl: &sharedStage{proc: p1}},
		{Name: "deliver", Kind: sdk.KindDeliverer, Impl: &fakeStage{deliver: okAll}},
	}
	q := openQueue(t, t.TempDir())
	defer q.Close()
	e, err := New(q, stages, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.excl[0] != e.excl[2] {
		t.Error("two stages of one process have their own suspect locks: a crash one causes is blamed on the other's item")
	}
	if e.excl[0] == e.excl[1] || e.excl[1] == e.excl[3] || e.excl[0] == e.excl[3] {
		t.Error("stages of different processes share a suspect lock")
	}
}
