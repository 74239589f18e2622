// Package couchtest emulates the HTTP API of an Apache CouchDB 3.4 cluster, node by node, for tests
// and benchmarks that cannot run real CouchDB. It follows the recordings of a real 3.4.3 cluster in
// ../shared/couchdb-real-responses.md, couchdb-real-shards.md, couchdb-real-sessions.md and
// couchdb-real-zones.md (copies in testdata/, all replayed by the conformance tests), including their
// odd parts: add_node
// answers 201 when the remote refused the credentials and nothing was added, a repeated _nodes PUT is
// 409, a repeated finish_cluster is 400, a node whose _nodes doc was deleted keeps its own stale view
// and does not re-add itself, shard maps never change on their own, a new shard copy stays empty until
// _sync_shards or the next write (plus the sync delay), and five failed logins lock an account.
//
// What it models:
//   - nodes with their own listener, admins, ini settings, node-local _nodes and _dbs databases and
//     shard copies; a Network that plays the Erlang distribution: two running nodes with the same
//     cookie are connected when either lists the other in its _nodes;
//   - mem3's push replication of _nodes and _dbs to the members a node lists, winning revision by
//     revision number;
//   - _cluster_setup's computed state and every action's answers; the official image's profile
//     (bind_address any, so cluster_enabled at boot) and the Helm chart's seedlist profile;
//   - clustered databases split into q ranges with n copies, documents placed by mem3's hash
//     (crc32 of the term_to_binary of the id), quorum writes (201, 202 when fewer copies answered),
//     internal replication after the sync delay or _sync_shards, node-local shard info;
//   - mem3_rep's shard-sync checkpoints (_local docs on both copies, CouchDB's ids), _bulk_docs,
//     _all_docs, _changes, _revs_diff, _local_docs, /{db}/_shards/{docid}, node-local _dbs _changes,
//     GET /_dbs, /_node/{node}/_system and _prometheus (with its leading empty line and bare CRs);
//   - the _replicator database and scheduler: documents go null -> initializing -> running, then
//     crashing (auth errors, unreachable endpoints, duplicates) or completed (one-shot, document
//     rewritten); jobs copy documents over HTTP, so replications between emulated nodes work;
//   - admin password hashes as 3.4 stores them ("-pbkdf2:sha256-<key>,<salt>,<iterations>"), each
//     node hashing a plaintext password with its own random salt, GET/PUT/DELETE
//     /_node/{node}/_config/admins/{user} (a "-pbkdf2" value kept as it is, a plaintext one hashed,
//     the old hash answered), finish_cluster copying the coordinator's hashes, uuid and secret;
//     AuthSession cookies from POST /_session, valid only on nodes holding the same [chttpd_auth]
//     secret and the same salt for the user, unexpired (600 s), GET /_session answering
//     userCtx.name null for anything else, cookies authenticating other requests too;
//   - restarts: a node with NodeConfig.EphemeralIni (the official image; test/couchpods sets it) loses
//     its runtime _config writes at every start, rehashes its plaintext password with a new salt and
//     draws an unset uuid or secret afresh, while data, _nodes and _dbs survive; a restarted node's
//     copies lag until internal replication pushes to them (the sync delay after its start), with
//     mem3_rep's checkpoints; Node.SetSyncDelay holds back every push into or out of one node's
//     copies (mem3_sync busy or slow on it), so a restarted node stays behind for that long while
//     the writes it takes as it runs still reach it at once;
//   - zones and placement as mem3:choose_shards does it on the coordinating node: "zone" and "decom"
//     (true or "true") on its _nodes docs, its [cluster] placement ("zone-a:1,zone-b:1") overriding
//     the n asked, each rule capped to the allowed nodes of its zone, 500 no_nodes_in_zone and no
//     database when a rule's zone has none, decommissioned nodes excluded and n capped to the rest;
//   - optionally (NetworkOptions.ShardCacheLag), mem3_shards' cache behind each node's _dbs: a
//     _sync_shards lists its pairs from it, so one posted before its node lists a new copy pushes
//     nothing to that copy, and a burst of edits on one node is listed one change after another;
//   - an optional copy-fill rate (NetworkOptions.FillRate, RecordedFillRate): internal replication
//     moves a copy's documents at that many bytes per second, in checkpointed batches, so a new copy
//     fills in CopyFillBytes / FillRate (FillTime); sizes.file grows with the bodies written;
//   - maintenance mode and its effect on /_up and on writes; basic auth, 401 bodies and 3.4's
//     lockout as couch_auth_lockout keeps it: failures counted per (client address, user, password
//     salt), 403 from the 5th on even for the right password, attempts while locked not counted, the
//     count dropped 5 minutes after its first failure, a password change (new salt) or a restart
//     starting afresh; Requests counts failed, locked and all authentication attempts;
//   - fault injection per node: stop/start, hang, latency, 5xx, dropped connections, bad JSON.
//
// Its delays (internal replication's sync delay, the scheduler's steps, checkpoint intervals) default
// to CouchDB's and are NetworkOptions, so tests shorten them; two test-only hooks force what CouchDB
// draws at random or decides by rules the recordings do not pin down (initial placement, job owners).
//
// What it deliberately does not model: views, Mango, continuous _changes feeds, attachments,
// conflicts between document revisions (the highest revision wins), compaction, resharding jobs,
// filtered replications, disk persistence (a stopped node keeps its data in memory, like a
// PersistentVolumeClaim), real Erlang distribution, the lockout's warn and off modes, its max_objects
// bound and client_ip_header (the peer is always the socket's), couch_file's exact on-disk sizes
// (sizes.file and active are plausible and grow with the data), revision hashes (deterministic MD5s
// over the revision's content, but not CouchDB's term_to_binary encoding), _users and non-admin
// sessions, cookie refresh before expiry and [chttpd_auth] timeout or hash_algorithms other than the
// defaults, the _config PUT of an Erlang cookie or of [admins] in ini files other than the boot
// admin, the ~0.5 s delay before a _nodes edit reaches the other nodes (it is pushed at once), and
// mem3_sync's per-node push concurrency (every pair of copies fills on its own at FillRate).
//
// Admin hash keys are derived (pbkdf2, PasswordIterations, 600,000 by default as in CouchDB) only
// when a hash string is read or a login must check a hash the node did not make itself, and under
// the network's lock: at the default, each derivation costs about 0.2 s (seconds under -race), so
// tests and benchmarks that read hashes set PasswordIterations low (test/e2e and test/bench use
// 1,000).
package couchtest
