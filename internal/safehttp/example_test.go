package safehttp_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/lanyardhq/lanyard/internal/safehttp"
)

func ExampleGet() {
	c := safehttp.NewClient(safehttp.Options{}) // production: https only, public addresses only
	resp, err := safehttp.Get(context.Background(), c, "https://client.example.com/metadata.json", 5<<10)
	switch {
	case errors.Is(err, safehttp.ErrBlockedAddress):
		fmt.Println("the host resolves to a private or loopback address")
	case err != nil:
		fmt.Println("fetch failed:", err)
	default:
		fmt.Println(resp.Status, len(resp.Body))
	}
}

func ExampleCheckAddr() {
	for _, s := range []string{"93.184.216.34", "10.1.2.3", "169.254.169.254", "::ffff:127.0.0.1"} {
		fmt.Println(s, safehttp.CheckAddr(netip.MustParseAddr(s), false) == nil)
	}
	// Output:
	// 93.184.216.34 true
	// 10.1.2.3 false
	// 169.254.169.254 false
	// ::ffff:127.0.0.1 false
}
