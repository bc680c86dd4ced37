package broker

import (
	"reflect"
	"testing"
)

// fillAll gives every string, bool and slice reachable from v a value.
func fillAll(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fillAll(v.Field(i))
			}
		}
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			fillAll(s.Index(i))
		}
		v.Set(s)
	}
}

// changeAll changes every element of every slice reachable from v in
// place (what a careless caller might do to its copy).
func changeAll(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				changeAll(v.Field(i))
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			e := v.Index(i)
			if e.Kind() == reflect.String {
				e.SetString("changed")
			}
			changeAll(e)
		}
	}
}

// TestClone: a clone of each record that stores memoise shares no slice
// with the original, however deep, including fields added after this test
// was written.
func TestClone(t *testing.T) {
	t.Run("Resource", func(t *testing.T) { checkClone(t, Resource.Clone) })
	t.Run("Grant", func(t *testing.T) { checkClone(t, Grant.Clone) })
	t.Run("Connection", func(t *testing.T) { checkClone(t, Connection.Clone) })
}

func checkClone[T any](t *testing.T, clone func(T) T) {
	var r, want T
	fillAll(reflect.ValueOf(&r).Elem())
	fillAll(reflect.ValueOf(&want).Elem())
	c := clone(r)
	if !reflect.DeepEqual(c, want) {
		t.Errorf("clone = %+v, want %+v", c, want)
	}
	changeAll(reflect.ValueOf(&c).Elem())
	if !reflect.DeepEqual(r, want) {
		t.Errorf("changing a clone changed the original:\n got %+v\nwant %+v", r, want)
	}
}
