// Delivery's users (the scheduler, `serve`, tests) make delivery workers run
// on event loops with EventLoopExecutor; it lives in TernConcurrency so that
// the listener can use it too.
@_exported import TernConcurrency
