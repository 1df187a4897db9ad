// closetrace: which side closed an HTTP keep-alive connection first, and which request was
// caught in it.
#include <cstdio>

#include <CLI/CLI.hpp>

#include "alb_command.h"
#include "analysis_commands.h"
#include "demo.h"
#include "doctor.h"
#include "record.h"

int main(int argc, char** argv) {
    CLI::App app{"closetrace: prove which side closed an HTTP keep-alive connection first"};
    app.set_version_flag("--version", CLOSETRACE_VERSION);
    app.require_subcommand(1);
    closetrace::add_record_command(app);
    closetrace::add_doctor_command(app);
    closetrace::add_demo_command(app);
    closetrace::add_analysis_commands(app);
    closetrace::add_alb_command(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::RuntimeError& e) {
        // Our commands' failures: one line that says what to do.
        if (*e.what()) std::fprintf(stderr, "%s\n", e.what());
        return e.get_exit_code();
    } catch (const CLI::ParseError& e) {
        std::fprintf(stderr, "closetrace: %s; see closetrace --help\n", e.what());
        return 2;
    }
    return 0;
}
