-- What waits, per domain and age (Postfix's qshape).
SELECT * FROM queue_shape;
