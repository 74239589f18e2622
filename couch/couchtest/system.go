package couchtest

import (
	"math/rand/v2"
	"time"
)

// registeredProcesses are the registered Erlang processes whose message queue lengths /_system
// reports for a 3.4.3 node (the recording's list), besides the per-peer rexi_server_<node> and
// rexi_buffer_<node> ones.
var registeredProcesses = []string{
	"couch_server", "index_server", "rexi_server", "rexi_buffer", "config", "standard_error_sup",
	"mem3_reshard_dbdoc", "ddoc_cache_lru", "couch_primary_services", "nouveau_index_manager", "ioq_sup",
	"couch_disk_monitor", "custodian_db_checker", "ken_server", "os_mon_sup", "tls_client_ticket_store",
	"couch_replicator_scheduler", "ssl_admin_sup", "disksup", "mem3_nodes", "couch_scanner_server",
	"ssl_manager", "dtls_connection_sup", "couch_epi_functions_gen_couch_db", "rexi_server_mon",
	"couch_peruser", "jwtf_keystore", "couch_stats_sup", "ssl_connection_sup", "inet_gethost_native",
	"tls_server_sup", "mem3_distribution", "custodian_server", "couch_lockout_lru", "mem3_sup", "smoosh_server",
	"kernel_refc", "kernel_sup", "tls_connection_sup", "couch_epi_functions_gen_chttpd", "timer_server", "user",
	"mem3_reshard", "mango_sup", "ioq", "dtls_listener_sup", "couch_log_sup", "runtime_tools_sup",
	"rexi_buffer_sup", "index_server_1", "httpd_sup", "logger_std_h_ssl_handler", "mem3_reshard_sup",
	"couch_uuids", "ssl_upgrade_server_session_cache_sup", "chttpd_auth_cache_lru",
	"couch_replicator_rate_limiter", "logger", "couch_server_2", "ssl_listen_tracker_sup", "httpc_manager",
	"couch_epi_functions_gen_global_changes", "couch_stats_process_tracker", "ddoc_cache_sup",
	"couch_secondary_services", "couch_sup", "ssl_server_session_cache_sup", "inet_db",
	"dtls_server_session_cache_sup", "dreyfus_sup", "logger_proxy", "alarm_handler", "ken_sup",
	"couch_passwords_cache_lru", "couch_event_server", "global_name_server", "file_server_2", "mem3_seeds",
	"couch_epi_sup", "global_changes_server", "couch_scanner_sup", "couch_proc_manager", "ssl_pem_cache",
	"rexi_server_sup", "couch_epi_functions_gen_chttpd_auth", "mochiweb_clock", "jwtf_sup",
	"mem3_reshard_job_sup", "nouveau_sup", "couch_epi_data_gen_dreyfus_black_list", "dtls_sup",
	"couch_index_sup", "socket_registry", "custodian_sup", "logger_sup", "ibrowse", "inets_sup", "mem3_sync",
	"couch_replicator_connection", "smoosh_sup", "net_sup", "chttpd_sup", "couch_replicator_sup",
	"couch_server_1", "couch_epi_functions_gen_feature_flags", "inet_gethost_native_sup", "standard_error",
	"net_kernel", "logger_handler_watcher", "sasl_safe_sup", "rexi_buffer_mon", "couch_prometheus_sup",
	"index_server_2", "sasl_sup", "couch_replication", "kernel_safe_sup", "auth", "release_handler",
	"couch_scanner_rate_limiter", "chttpd", "config_event", "config_sup", "mem3_sync_nodes",
	"couch_epi_data_gen_flags_config", "httpc_profile_sup", "erts_code_purger", "couch_stats_server",
	"erl_epmd", "couch_task_status", "dtls_server_sup", "global_group_check", "application_controller",
	"erl_prim_loader", "tls_server_session_ticket_sup", "init", "couch_event_sup2", "mem3_shards",
	"erl_signal_server", "global_changes_sup", "couch_plugin", "chttpd_auth_cache", "ibrowse_sup",
	"dreyfus_index_manager", "rexi_sup", "couch_log_server", "httpc_sup", "couch_epi_functions_gen_couch_index",
	"couch_peruser_sup", "couch_httpd_vhost", "setup_sup", "ssl_sup", "mem3_events", "couch_replicator_pg",
	"code_server", "tls_sup", "couch_password_hasher", "global_group", "couch_replicator_doc_processor", "rex",
	"httpc_handler_sup", "error_logger", "couch_epi_functions_gen_chttpd_handlers",
}

// system answers GET /_node/{node}/_system with the shape of CouchDB 3.4.3's: VM statistics (made
// up, they measure the Erlang VM) and internal_replication_jobs, which mem3_sync reported as 0 in
// every poll of the recording, even while copies were being filled.
func (n *Node) system() obj {
	r := rand.New(rand.NewPCG(uint64(len(n.name)), uint64(n.started.UnixNano())))
	v := func(lo, hi int) int { return lo + r.IntN(hi-lo+1) }
	queues := obj{}
	for _, p := range registeredProcesses {
		queues[p] = 0
	}
	for _, f := range []string{"couch_file", "couch_db_updater"} {
		queues[f] = obj{"count": len(n.copies) + 2, "min": 0, "max": 0, "50": 0, "90": 0, "99": 0}
	}
	dist, events := obj{}, obj{}
	for _, o := range n.net.order {
		queues["rexi_server_"+o.name] = 0
		queues["rexi_buffer_"+o.name] = 0
		if o == n || !n.net.connected(n, o) {
			continue
		}
		dist[o.name] = obj{"recv_oct": v(1e4, 2e5), "recv_cnt": v(100, 2000), "recv_max": v(1000, 6000), "recv_avg": v(100, 300),
			"recv_dvi": v(0, 60), "send_oct": v(1e4, 2e5), "send_cnt": v(100, 600), "send_max": v(1000, 6000), "send_avg": v(100, 300), "send_pend": 0}
		events[o.name] = []any{[]any{o.started.UTC().Format(time.RFC3339), "nodeup"}}
	}
	return obj{
		"uptime": int64(time.Since(n.started).Seconds()),
		"memory": obj{"other": v(1e7, 2e7), "atom": 631001, "atom_used": v(6e5, 6.2e5), "processes": v(1e7, 2e7),
			"processes_used": v(1e7, 2e7), "binary": v(1e5, 1e6), "code": 13659382, "ets": v(1e6, 2e6)},
		"run_queue": 0, "run_queue_dirty_cpu": 0, "ets_table_count": v(120, 150), "context_switches": v(5e4, 1e5),
		"reductions": v(1e7, 2e7), "garbage_collection_count": v(5000, 10000), "words_reclaimed": v(1e7, 2e7),
		"io_input": v(1e5, 5e5), "io_output": v(1e5, 5e5), "os_proc_count": 0, "stale_proc_count": 0,
		"process_count": v(300, 400), "process_limit": 262144, "message_queues": queues,
		"internal_replication_jobs": 0, "distribution": dist, "distribution_events": events,
	}
}
