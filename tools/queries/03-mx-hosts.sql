-- Per MX host: attempts, success rate, TLS share, session time, last error, circuit breaker.
SELECT mx_host, attempts, success_rate, tls_share, mean_session_seconds AS mean_s, last_error,
       consecutive_failures AS fails, cooling_down_until
  FROM mx_stats
 ORDER BY attempts DESC;
