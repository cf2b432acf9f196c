"""The restore command: versions chosen, archived objects requested, downloads checked and placed."""
