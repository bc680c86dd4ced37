package storetest

import (
	"reflect"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
)

// fill gives every string, bool and slice reachable from v a value.
func fill(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i))
			}
		}
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			fill(s.Index(i))
		}
		v.Set(s)
	}
}

// TestClone: a clone of each record the stores memoise (codec.Memo)
// shares no slice with the original, however deep, including fields added
// after this test was written.
func TestClone(t *testing.T) {
	t.Run("Resource", func(t *testing.T) { checkClone(t, broker.Resource.Clone) })
	t.Run("Grant", func(t *testing.T) { checkClone(t, broker.Grant.Clone) })
	t.Run("Connection", func(t *testing.T) { checkClone(t, broker.Connection.Clone) })
}

func checkClone[T any](t *testing.T, clone func(T) T) {
	var r, want T
	fill(reflect.ValueOf(&r).Elem())
	fill(reflect.ValueOf(&want).Elem())
	c := clone(r)
	if !reflect.DeepEqual(c, want) {
		t.Errorf("clone = %+v, want %+v", c, want)
	}
	scribble(reflect.ValueOf(&c).Elem())
	if !reflect.DeepEqual(r, want) {
		t.Errorf("changing a clone changed the original:\n got %+v\nwant %+v", r, want)
	}
}
