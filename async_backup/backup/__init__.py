"""backup/: the backup command: walk -> plan -> upload/delete -> record.

Owns the pure planner (`plan`), the upload and delete workers (`upload`, `delete`, the memory
`budget`), and the run: `pipeline` wires the stages and holds no policy; the policy and the steps
around it have rooms of their own (`runs`, `setup`, `cleanup`, `policy`, `mounts`, `content`).
A lost cache's rebuild, the old script's caches and the cache snapshot are recovery/'s.

May import every lower layer (recovery/, report/, cache/, s3/, disk/, settings/, errors). Must not import
verify/, restore/ or cli.
"""
