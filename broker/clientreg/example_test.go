package clientreg_test

import (
	"fmt"

	"github.com/lanyardhq/lanyard/broker/clientreg"
)

func ExampleValidateRedirectURI() {
	for _, uri := range []string{
		"https://agent.example.com/callback",
		"http://127.0.0.1:8765/callback",
		"com.example.agent:/oauth",
		"javascript:alert(1)",
		"https://agent.example.com/callback#frag",
	} {
		fmt.Println(clientreg.ValidateRedirectURI(uri, clientreg.AppNative, false))
	}
	// Output:
	// <nil>
	// <nil>
	// <nil>
	// invalid_redirect_uri: redirect URI scheme is not allowed
	// invalid_redirect_uri: redirect URI must not have a fragment
}
