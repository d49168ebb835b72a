"""Local fake providers: loopback servers that speak each provider's real wire protocol."""
