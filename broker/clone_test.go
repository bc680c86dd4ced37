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

// TestResourceClone: a clone shares no slice with the original, however
// deep, including fields added after this test was written.
func TestResourceClone(t *testing.T) {
	var r, want Resource
	fillAll(reflect.ValueOf(&r).Elem())
	fillAll(reflect.ValueOf(&want).Elem())
	c := r.Clone()
	if !reflect.DeepEqual(c, want) {
		t.Errorf("clone = %+v, want %+v", c, want)
	}
	changeAll(reflect.ValueOf(&c).Elem())
	if !reflect.DeepEqual(r, want) {
		t.Errorf("changing a clone changed the original:\n got %+v\nwant %+v", r, want)
	}
}
