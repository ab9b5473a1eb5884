"""Built-in wcompress passes, one module each. Installed as `wcompress_plugins`."""
