package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
)

// testTable runs the checks every kind of record must pass.
func testTable[T broker.Record](t *testing.T, open Opener, k kind[T]) {
	ctx := context.Background()

	t.Run("RoundTrip", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.table(e.store)
		rec := k.fixture("rec-1", "1", e.clock.Now())
		mustNoErr(t, "Create", tab.Create(ctx, rec))
		got, err := tab.Get(ctx, rec.RecordID())
		if noErr(t, "Get", err) {
			equal(t, "Get after Create", got, rec)
		}
		// A caller may change the record it got, slices included; that is
		// its copy only (a store that remembers decoded records must
		// hand out copies).
		scribble(reflect.ValueOf(&got).Elem())
		if got, err := tab.Get(ctx, rec.RecordID()); noErr(t, "Get after the caller changed its copy", err) {
			equal(t, "Get after the caller changed its copy", got, rec)
		}
		wantErr(t, "Create duplicate", tab.Create(ctx, k.fixture("rec-1", "other", e.clock.Now())), broker.ErrAlreadyExists)
		if got, err := tab.Get(ctx, rec.RecordID()); noErr(t, "Get after duplicate Create", err) {
			equal(t, "Get after duplicate Create", got, rec)
		}
		_, err = tab.Get(ctx, "missing")
		wantErr(t, "Get missing", err, broker.ErrNotFound)
		for _, ix := range rec.RecordIndexes() {
			if !ix.Unique || ix.Value == "" {
				continue
			}
			got, err := tab.GetBy(ctx, ix.Name, ix.Value)
			if noErr(t, "GetBy "+ix.Name, err) {
				equal(t, "GetBy "+ix.Name, got, rec)
			}
			_, err = tab.GetBy(ctx, ix.Name, ix.Value+"-missing")
			wantErr(t, "GetBy missing "+ix.Name, err, broker.ErrNotFound)
		}
	})

	t.Run("Update", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.table(e.store)
		rec := k.fixture("rec-1", "1", e.clock.Now())
		mustNoErr(t, "Create", tab.Create(ctx, rec))
		want := k.mutate(rec)
		got, err := tab.Update(ctx, rec.RecordID(), func(old T) (T, error) {
			equal(t, "Update fn argument", old, rec)
			return k.mutate(old), nil
		})
		if noErr(t, "Update", err) {
			equal(t, "Update result", got, want)
		}
		if got, err := tab.Get(ctx, rec.RecordID()); noErr(t, "Get after Update", err) {
			equal(t, "Get after Update", got, want)
		}
		checkIndexes(t, tab, rec, want)

		boom := errors.New("boom")
		_, err = tab.Update(ctx, rec.RecordID(), func(T) (T, error) { return rec, boom })
		if !errors.Is(err, boom) {
			t.Errorf("Update whose fn fails: error = %v, want %v", err, boom)
		}
		_, err = tab.Update(ctx, rec.RecordID(), func(T) (T, error) { return k.fixture("rec-2", "2", e.clock.Now()), nil })
		wantErr(t, "Update changing the ID", err, broker.ErrInvalid)
		_, err = tab.Update(ctx, rec.RecordID(), func(old T) (T, error) { return k.invalid(old), nil })
		wantErr(t, "Update to an invalid record", err, broker.ErrInvalid)
		if got, err := tab.Get(ctx, rec.RecordID()); noErr(t, "Get after failed Updates", err) {
			equal(t, "Get after failed Updates", got, want)
		}
		if _, err := tab.Get(ctx, "rec-2"); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Update changing the ID stored rec-2: Get error = %v, want ErrNotFound", err)
		}
		_, err = tab.Update(ctx, "missing", func(old T) (T, error) { return old, nil })
		wantErr(t, "Update missing", err, broker.ErrNotFound)
	})

	t.Run("UniqueIndex", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.table(e.store)
		a := k.fixture("rec-a", "a", e.clock.Now())
		if !hasUnique(a) {
			t.Skip("no unique index")
		}
		mustNoErr(t, "Create a", tab.Create(ctx, a))
		wantErr(t, "Create with a taken unique value", tab.Create(ctx, k.fixture("rec-b", "a", e.clock.Now())), broker.ErrAlreadyExists)
		if _, err := tab.Get(ctx, "rec-b"); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("rejected Create stored the record: Get error = %v, want ErrNotFound", err)
		}
		b := k.fixture("rec-b", "b", e.clock.Now())
		mustNoErr(t, "Create b", tab.Create(ctx, b))
		_, err := tab.Update(ctx, "rec-b", func(T) (T, error) { return k.fixture("rec-b", "a", e.clock.Now()), nil })
		wantErr(t, "Update to a taken unique value", err, broker.ErrAlreadyExists)
		if got, err := tab.Get(ctx, "rec-b"); noErr(t, "Get b", err) {
			equal(t, "b after rejected Update", got, b)
		}
		// Freeing a value lets another record take it.
		mustNoErr(t, "Delete a", tab.Delete(ctx, "rec-a"))
		_, err = tab.Update(ctx, "rec-b", func(T) (T, error) { return k.fixture("rec-b", "a", e.clock.Now()), nil })
		noErr(t, "Update to a freed unique value", err)
		checkIndexes(t, tab, b, k.fixture("rec-b", "a", e.clock.Now()))
	})

	t.Run("Invalid", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.table(e.store)
		bad := k.invalid(k.fixture("rec-1", "1", e.clock.Now()))
		wantErr(t, "Create invalid", tab.Create(ctx, bad), broker.ErrInvalid)
		_, err := tab.Get(ctx, "rec-1")
		wantErr(t, "Get after invalid Create", err, broker.ErrNotFound)
		noID := k.fixture("", "1", e.clock.Now())
		wantErr(t, "Create with empty ID", tab.Create(ctx, noID), broker.ErrInvalid)
		page, err := tab.List(ctx, broker.Query{})
		if noErr(t, "List", err) && len(page.Items) != 0 {
			t.Errorf("List after invalid Creates = %q, want none", ids(page.Items))
		}
	})

	t.Run("BadQuery", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.table(e.store)
		rec := k.fixture("rec-1", "1", e.clock.Now())
		mustNoErr(t, "Create", tab.Create(ctx, rec))
		// A caller who forgets Index, or misspells it, must get an error,
		// not every record of the kind (other users' rows) or none.
		for _, value := range []string{"x", rec.RecordID()} {
			page, err := tab.List(ctx, broker.Query{Value: value})
			wantErr(t, fmt.Sprintf("List with Value %q and no Index", value), err, broker.ErrInvalid)
			if len(page.Items) != 0 {
				t.Errorf("List with Value %q and no Index returned %q, want nothing", value, ids(page.Items))
			}
		}
		page, err := tab.List(ctx, broker.Query{Index: "no-such-index", Value: "x"})
		wantErr(t, "List by an unknown index", err, broker.ErrInvalid)
		if len(page.Items) != 0 {
			t.Errorf("List by an unknown index returned %q, want nothing", ids(page.Items))
		}
		_, err = tab.GetBy(ctx, "no-such-index", "x")
		wantErr(t, "GetBy an unknown index", err, broker.ErrInvalid)
		for _, ix := range rec.RecordIndexes() {
			_, err := tab.List(ctx, broker.Query{Index: ix.Name})
			wantErr(t, "List by "+ix.Name+" with an empty Value", err, broker.ErrInvalid)
			if ix.Value == "" {
				continue
			}
			page, err := tab.List(ctx, broker.Query{Index: ix.Name, Value: ix.Value})
			if noErr(t, "List by "+ix.Name, err) {
				equal(t, "List by "+ix.Name, ids(page.Items), []string{rec.RecordID()})
			}
		}
	})

	t.Run("ListDelete", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.table(e.store)
		var want []T
		for _, n := range []string{"3", "1", "2"} {
			rec := k.fixture("rec-"+n, n, e.clock.Now())
			mustNoErr(t, "Create", tab.Create(ctx, rec))
			want = append(want, rec)
		}
		slices.SortFunc(want, func(a, b T) int { return strings.Compare(a.RecordID(), b.RecordID()) })
		page, err := tab.List(ctx, broker.Query{})
		if noErr(t, "List", err) {
			equal(t, "List", page.Items, want)
			if page.Next != "" {
				t.Errorf("List of everything: Next = %q, want empty", page.Next)
			}
		}
		mustNoErr(t, "Delete", tab.Delete(ctx, "rec-2"))
		_, err = tab.Get(ctx, "rec-2")
		wantErr(t, "Get after Delete", err, broker.ErrNotFound)
		wantErr(t, "Delete again", tab.Delete(ctx, "rec-2"), broker.ErrNotFound)
		page, err = tab.List(ctx, broker.Query{})
		if noErr(t, "List after Delete", err) {
			equal(t, "List after Delete", ids(page.Items), []string{"rec-1", "rec-3"})
		}
		for _, ix := range want[1].RecordIndexes() {
			if ix.Value == "" {
				continue
			}
			page, err := tab.List(ctx, broker.Query{Index: ix.Name, Value: ix.Value})
			if noErr(t, "List by "+ix.Name, err) && len(page.Items) != 0 {
				t.Errorf("List by %s=%q after Delete = %q, want none", ix.Name, ix.Value, ids(page.Items))
			}
		}
		// A deleted ID can be created again.
		noErr(t, "Create after Delete", tab.Create(ctx, want[1]))
	})
}

// checkIndexes reports unless the record moved from every index entry of
// before to every index entry of after.
func checkIndexes[T broker.Record](t *testing.T, tab broker.Table[T], before, after T) {
	t.Helper()
	ctx := context.Background()
	id := after.RecordID()
	listed := func(ix broker.Index) bool {
		t.Helper()
		page, err := tab.List(ctx, broker.Query{Index: ix.Name, Value: ix.Value})
		noErr(t, fmt.Sprintf("List by %s=%q", ix.Name, ix.Value), err)
		return slices.Contains(ids(page.Items), id)
	}
	now := after.RecordIndexes()
	for _, ix := range before.RecordIndexes() {
		if ix.Value != "" && !slices.Contains(now, ix) && listed(ix) {
			t.Errorf("%q still listed under its old %s %q", id, ix.Name, ix.Value)
		}
		if ix.Value != "" && ix.Unique && !slices.Contains(now, ix) {
			if _, err := tab.GetBy(ctx, ix.Name, ix.Value); !errors.Is(err, broker.ErrNotFound) {
				t.Errorf("GetBy old %s %q: error = %v, want ErrNotFound", ix.Name, ix.Value, err)
			}
		}
	}
	for _, ix := range now {
		if ix.Value == "" {
			continue
		}
		if !listed(ix) {
			t.Errorf("%q not listed under its %s %q", id, ix.Name, ix.Value)
		}
		if ix.Unique {
			got, err := tab.GetBy(ctx, ix.Name, ix.Value)
			if noErr(t, "GetBy new "+ix.Name, err) {
				equal(t, "GetBy new "+ix.Name, got, after)
			}
		}
	}
}

func hasUnique(r broker.Record) bool {
	return slices.ContainsFunc(r.RecordIndexes(), func(ix broker.Index) bool { return ix.Unique })
}

// scribble overwrites, in place, every string held in a slice reachable
// from v: what a careless caller might do to the record it was given.
func scribble(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				scribble(v.Field(i))
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			if e := v.Index(i); e.Kind() == reflect.String {
				e.SetString("scribbled")
			} else {
				scribble(e)
			}
		}
	}
}
