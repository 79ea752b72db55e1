-- Per destination domain: volumes, delivery and deferral rates, time to deliver, top deferral reply.
SELECT domain, recipients AS rcpts, delivered, bounced, suppressed, waiting, delivery_rate, deferral_rate,
       median_seconds AS median_s, top_deferral
  FROM domain_stats
 ORDER BY recipients DESC
 LIMIT 10;
