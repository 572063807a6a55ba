"""Every threshold the verdicts use, in one place, with the measurements behind it.

Calibrated on this project's reference machine (2 vCPU VM, kernel 6.18, Flask under
gunicorn 1 worker x 4 threads, 2 noise processes; shared/facts/measurements.md):

| signal (of the app)            | alone        | + noise     | + noise, 0.5-CPU quota |
|--------------------------------|--------------|-------------|------------------------|
| run-queue wait / on-CPU time   | 0.04 - 0.30  | 0.68 - 1.23 | 5.6 - 21.9             |
| system PSI cpu some            | 3 - 14 %     | 54 - 64 %   | 88 - 89 %              |
| cgroup PSI cpu full            | 1 %          | 1 %         | 75 %                   |
| throttled periods              | 0 %          | 0 %         | 100 %                  |

Context switches/s and average slice length did not separate the conditions (a threaded
server switches 270-1900 times/s uncontended and fewer times under contention), so no
verdict uses them.
"""

# Wait-to-run: a task that waits half as long as it runs is contended; twice as long, severely.
WAIT_TO_RUN_CONTENDED = 0.5
# Below contention, "mild" from here: more waiting than the lab's app alone showed at
# its median (0.04-0.30 measured), not yet what neighbours caused (0.68-1.23).
WAIT_TO_RUN_MILD = 0.1
# A wait/run ratio only means contention when each wait is long enough to matter: a task
# that wakes, runs 10 us and sleeps waits 20-50 us for a CPU with nothing else running
# (measured: a 10 ms sleep loop alone, 23 us per slice); the lab's app waited 144-171
# us per slice alone, 716-1258 us beside noise, 9431 us under its quota.
WAIT_PER_SLICE_FLOOR_US = 50.0
# A process of a larger diagnosis (a cgroup's, the machine's) is called moderately or
# severely starved only when it waited at least this share of the window: a kernel
# worker that waits 0.5 ms in 3 s for 0.1 ms of work has a high wait/run and no problem.
NOTABLE_WAIT_SHARE = 0.01
WAIT_TO_RUN_SEVERE = 2.0

# Share of CFS periods in which the group hit its quota.
THROTTLED_PERIODS_NOTABLE = 0.25
# Throttled "below its limit": throttled periods in an interval whose use stayed at or
# under this share of the quota (kubernetes issue 67577: many threads drain a period's
# quota in its first milliseconds, so a group using half its quota is still throttled).
THROTTLED_BELOW_LIMIT_USE = 0.8

# PSI, percent of wall time (from `total` deltas).
PSI_SYSTEM_SOME_NOTABLE = 40.0
PSI_CGROUP_FULL_NOTABLE = 20.0

# A row "separates" the arms when the contention value is at least this many times the
# baseline value (or, for percentages, this many points above it).
SEPARATION_FACTOR = 2.0
SEPARATION_POINTS = 20.0

# A process counts in the fairness index when it used at least this share of the CPU the
# sandbox used (so an idle gunicorn master does not read as "unfair").
FAIRNESS_MIN_SHARE = 0.01

# A cause of waiting is named when it took at least this share of the target's CPU demand
# (running + runnable time).
CAUSE_MIN_SHARE = 0.02

# Time a runnable target spent with its CPU idle is charged to the quota when the group
# was throttled in at least this share of CFS periods, and to wake-up latency otherwise
# (measured: the lab's baseline throttles in 0-1% of periods, its quota arm in 100%).
IDLE_WAIT_THROTTLING_PERIODS = 0.05
