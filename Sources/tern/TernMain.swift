// The `tern` executable: the composition root is TernCLI; this only starts it.

import ArgumentParser
import TernCLI
#if canImport(Glibc)
import Glibc
#endif

@main
struct TernMain {
    static func main() async {
        // Everything `tern` creates (the database, its WAL and SHM, the lock
        // file, keys) is for the user running it alone: mail and password
        // hashes are nobody else's business.
        umask(0o077)
        await TernCommand.main()
    }
}
