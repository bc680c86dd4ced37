package mcpauth

// DropRecords is how many per-grant drop records the credential cache
// keeps.
func (c *Client) DropRecords() int { return c.credentials.dropRecords() }
