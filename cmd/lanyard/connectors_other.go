package main

import (
	"fmt"

	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/internal/config"
)

func buildOther(c config.Connector) (connectors.Connector, error) {
	return nil, fmt.Errorf("kind %q is not available in this build", c.Kind)
}
