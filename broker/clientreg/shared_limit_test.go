package clientreg

import (
	"net/http"
	"testing"
	"time"
)

// TestRegisterSharedLimit runs two Registrars on one store's counters, as
// two replicas: with 3 a minute, the 4th registration from an address is
// refused whichever replica gets it, another address is not affected, and
// the next minute starts again.
func TestRegisterSharedLimit(t *testing.T) {
	clk := newClock()
	db := openStore(t, clk)
	var replicas []*Registrar
	for range 2 {
		replicas = append(replicas, NewRegistrar(RegistrarOptions{Clients: db.Clients(), Now: clk.Now,
			Rate: 3.0 / 60, Counters: db.Counters()}))
	}
	body := `{"redirect_uris":["https://a.example/cb"]}`
	for i, want := range []int{201, 201, 201, 429, 429} {
		if rec, out := post(t, replicas[i%2], "203.0.113.7:4000", "application/json", body); rec.Code != want {
			t.Errorf("registration %d (replica %d): %d %v, want %d", i+1, i%2, rec.Code, out, want)
		}
	}
	if rec, out := post(t, replicas[0], "198.51.100.1:1", "application/json", body); rec.Code != http.StatusCreated {
		t.Errorf("other address: %d %v", rec.Code, out)
	}
	clk.Advance(time.Minute)
	if rec, out := post(t, replicas[1], "203.0.113.7:4000", "application/json", body); rec.Code != http.StatusCreated {
		t.Errorf("next minute: %d %v", rec.Code, out)
	}
}
