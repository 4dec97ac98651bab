"""The HTML report: `build` loads the stage outputs and renders template.html, `sections` makes its plain data,
`figures` its PNGs."""
