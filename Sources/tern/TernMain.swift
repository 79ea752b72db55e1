// The `tern` executable: the composition root is TernCLI; this only starts it.

import ArgumentParser
import TernCLI

@main
struct TernMain {
    static func main() async {
        await TernCommand.main()
    }
}
