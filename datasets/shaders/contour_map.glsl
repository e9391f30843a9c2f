// Topographic map: fbm heights quantised into coloured elevation bands with contour lines.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = fragCoord / iResolution.y * (1.5 + 3.0 * iParams[0].x) + iTime + iMouse.xy * 0.01;
    float h = kd_fbm(p, 5);
    float levels = 6.0 + 14.0 * iParams[0].y;
    float band = floor(h * levels) / levels;
    float line = abs(fract(h * levels) - 0.5);
    float contour = smoothstep(0.5, 0.5 - (0.05 + 0.1 * iParams[0].z), line);
    vec3 col = kd_palette(band * (0.7 + iParams[0].w));
    fragColor = vec4(col * (0.3 + 0.7 * contour), 1.0);
}
