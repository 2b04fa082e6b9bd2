"""Process plumbing every fedfhe process uses: config, logs, console, files, children."""
