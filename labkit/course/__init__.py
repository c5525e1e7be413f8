"""The course's machinery: what runs the lessons, not what they teach.

    show.py                show_source (labkit's own code in a notebook) and record (figures `labkit render` reads)
    render.py              run lessons with papermill and collect what they recorded
    widgets.py             the ipywidgets of the lessons (rank, learning rate, masks, GRPO)
    seeds.py, seed_claims.py  a lesson's key figures over three seeds, and the one-line claims they back
    exercise_notebooks.py  exercises/ generated from solutions/ (stubs, as nbgrader's generate_assignment)
    links.py               Colab and Binder badges and install cells of every notebook
    syllabus.py            the course map (labkit/assets/syllabus.json, the README's table, lesson 00's)
    contract.py            the lesson contract counted: words, knobs, listings, sections, the bench row
    cli.py                 the `labkit` command: doctor, exercises, links, render, train

The auto-checked exercises are labkit.check (the grader) and labkit.checks (one file of quizzes per lesson).
"""
